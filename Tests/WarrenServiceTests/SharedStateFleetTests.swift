import Foundation
import Testing
import Warren
@testable import WarrenAMQP
#if canImport(Glibc)
import Glibc
#endif

/// `warren serve` instances on one queue sharing the job-state store (`state.url`), with the
/// tools in processes of their own: the private RabbitMQ and Redis of `make test`.
@Suite("serve instances sharing the job-state store")
struct SharedStateFleetTests {
    static var redisURL: String { get throws { try TestEnvironment.redisURL } }

    /// Runs `scripts/redis.sh verb` (stop, start) on the test Redis.
    static func redis(_ verb: String) async throws {
        guard let dir = ProcessInfo.processInfo.environment["WARREN_TEST_REDIS_DIR"] else { throw TestEnvironment.RedisNotConfigured() }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = try ChildProcess("/bin/bash", [root.appendingPathComponent("scripts/redis.sh").path, verb, dir])
        #expect(try await script.exit(within: 30) == .exited(0), "scripts/redis.sh \(verb): \(script.output)")
    }

    /// `warren_state_store_fallbacks_total` in a /metrics text (0 when absent).
    static func fallbacks(_ metrics: String) -> Double {
        metrics.split(separator: "\n").filter { $0.hasPrefix("warren_state_store_fallbacks_total") }
            .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
    }

    /// A `warren` tool run with the fleet's queue, broker and store.
    static func tool(_ arguments: [String], queue: String, environment extra: [String: String] = [:]) async throws
        -> (exit: ProcessExit, output: String)
    {
        var environment = try TestEnvironment.serveEnvironment(queue: queue, handlersFile: "/nonexistent")
        environment["WARREN_HANDLERS_FILE"] = nil
        environment["WARREN_STATE_URL"] = try redisURL
        environment.merge(extra) { $1 }
        let process = try ChildProcess(TestEnvironment.binary("warren"), arguments, environment: environment)
        let exit = try await process.exit(within: 60)
        return (exit, process.output)
    }

    /// One instance is SIGKILLed while it runs jobs: once its lease (2 s) runs out, the jobs it
    /// held run on the other instance. None is lost, none is refused as a duplicate, and only
    /// those it was running when it died (at most its 8 slots) may run twice.
    @Test(.timeLimit(.minutes(5)))
    func aKilledInstancesJobsRunElsewhereOnceItsLeaseRunsOut() async throws {
        try await ServerAccess.redis.using {
            try await usingBroker {
                let url = try TestEnvironment.amqpURL
                let fleet = try await Fleet(
                    queue: TestEnvironment.unique(), queueType: .classic,
                    environment: ["WARREN_STATE_URL": try Self.redisURL, "WARREN_STATE_LEASE": "2s"], handlerDelay: .milliseconds(100))
                try await fleet.launch(1, urls: [url])
                try await fleet.launch(2, urls: [url])
                let ids = try await fleet.publish(600, urls: [url])
                try await waitUntil("instance 1 runs jobs", within: 60) { fleet.runs(by: 1) >= 40 }
                try await fleet.kill(1)
                let killedAt = ContinuousClock.now
                try await waitUntil("every job to run", within: 120) { fleet.service.completed.count >= ids.count }
                let runs = fleet.runs
                #expect(Set(runs.keys) == Set(ids), "every job ran")
                let twice = runs.filter { $0.value > 1 }
                print("shared state fleet: 600 jobs, \(twice.count) ran twice (killed with 8 slots), all done \(ContinuousClock.now - killedAt) after the kill")
                #expect(twice.count <= 8, "ran twice: \(twice)")
                await fleet.stopAll()
                let left = try fleet.leftInQueues(url: url)
                #expect(left.ready == 0 && left.dead == 0, "\(left)")
                fleet.deleteQueues(url: url)
            }
        }
    }

    /// Redis stops mid-run and starts again: jobs keep flowing (per process), `/readyz` says the
    /// store is degraded meanwhile and not once it is back, and every job completes.
    @Test(.timeLimit(.minutes(5)))
    func jobsFlowWhileTheStoreIsDownAndItIsUsedAgainWhenBack() async throws {
        try await ServerAccess.redis.using(exclusive: true) {
            try await usingBroker {
                let url = try TestEnvironment.amqpURL
                let fleet = try await Fleet(
                    queue: TestEnvironment.unique(), queueType: .classic, environment: ["WARREN_STATE_URL": try Self.redisURL],
                    handlerDelay: .milliseconds(20))
                let first = try await operationsAddress(of: try await fleet.launch(1, urls: [url]))
                let second = try await operationsAddress(of: try await fleet.launch(2, urls: [url]))
                let ids = try await fleet.publish(3_000, urls: [url])
                try await waitUntil("a few hundred jobs to run", within: 60) { fleet.service.completed.count >= 300 }
                try await Self.redis("stop")
                try await waitUntil("/readyz says the store is degraded", within: 20) {
                    guard let (status, body) = await get(first + "/readyz") else { return false }
                    return status == 200 && body.contains("state store degraded")
                }
                let duringOutage = fleet.service.completed.count
                try await waitUntil("jobs to keep flowing without the store", within: 30) { fleet.service.completed.count >= duringOutage + 200 }
                try await Self.redis("start")
                try await waitUntil("/readyz says ready, not degraded, on both", within: 30) {
                    for address in [first, second] {
                        guard let (status, body) = await get(address + "/readyz"), status == 200, body == "ready\n" else { return false }
                    }
                    return true
                }
                try await waitUntil("every job to run", within: 120) { fleet.service.completed.count >= ids.count }
                #expect(Set(fleet.runs.keys) == Set(ids), "every job ran")
                #expect(Self.fallbacks(await get(first + "/metrics")?.1 ?? "") > 0, "the fall-backs are counted")
                let log = fleet.process(1)?.output ?? ""
                #expect(log.contains("the job-state store cannot be used") && log.contains("the job-state store answers again"), "\(log.suffix(2_000))")
                await fleet.stopAll()
                let left = try fleet.leftInQueues(url: url)
                #expect(left.ready == 0 && left.dead == 0, "\(left)")
                fleet.deleteQueues(url: url)
            }
        }
    }

    /// From a process of its own: `warren cancel` stops a job running on an instance within a
    /// second and one still queued never runs; `warren result --wait` prints a result, `warren
    /// status` and `/jobs/{id}` on either instance show the job as it is, whichever ran it.
    @Test(.timeLimit(.minutes(5)))
    func toolsAndEitherInstanceSeeAndCancelJobsWhereverTheyRun() async throws {
        try await ServerAccess.redis.using {
            try await usingBroker {
                let url = try TestEnvironment.amqpURL
                let fleet = try await Fleet(
                    queue: TestEnvironment.unique(), queueType: .classic, environment: ["WARREN_STATE_URL": try Self.redisURL]
                ) { call in
                    if String(decoding: call.body, as: UTF8.self).contains("slow") { try? await Task.sleep(for: .seconds(30)) }
                    return (200, #"{"answer":42}"#)
                }
                let first = try await operationsAddress(of: try await fleet.launch(1, urls: [url]))
                let second = try await operationsAddress(of: try await fleet.launch(2, urls: [url]))
                // warren submit only checks that the queues exist: serve declares them once connected.
                for address in [first, second] {
                    try await waitUntil("\(address) to be ready", within: 30) { await get(address + "/readyz")?.0 == 200 }
                }
                // A healthy start counts no fall-back (the first calls wait for the first connection).
                for address in [first, second] { #expect(Self.fallbacks(await get(address + "/metrics")?.1 ?? "") == 0, "\(address)") }
                let queue = fleet.queue
                let submitted = try await Self.tool(["submit", "work", "--payload", #"{"n":1}"#, "--id", "quick-1"], queue: queue)
                #expect(submitted.exit == .exited(0), "\(submitted.output)")
                let result = try await Self.tool(["result", "quick-1", "--wait", "--timeout", "30s"], queue: queue)
                #expect(result.exit == .exited(0), "\(result.output)")
                #expect(result.output.contains(#"{"answer":42}"#), "\(result.output)")
                let status = try await Self.tool(["status", "quick-1"], queue: queue)
                #expect(status.output.contains("status: completed"), "\(status.output)")
                for address in [first, second] {
                    let (code, body) = try #require(await get(address + "/jobs/quick-1"))
                    #expect(code == 200, "\(address): \(body)")
                    #expect(body.contains(#""status":"completed""#) && body.contains(#""progress":100"#), "\(address): \(body)")
                }
                // Eight slow jobs fill one instance's slots or spread over both; all run.
                for index in 0..<16 {
                    _ = try await Self.tool(["submit", "work", "--payload", #"{"slow":true}"#, "--id", "slow-\(index)"], queue: queue)
                }
                try await waitUntil("slow-0 runs", within: 30) {
                    (try? await Self.tool(["status", "slow-0"], queue: queue))?.output.contains("status: running") == true
                }
                let asked = ContinuousClock.now
                let cancel = try await Self.tool(["cancel", "slow-0"], queue: queue)
                #expect(cancel.exit == .exited(0), "\(cancel.output)")
                #expect(cancel.output.contains("is stopping it"), "\(cancel.output)")
                try await waitUntil("slow-0 is cancelled", within: 10) {
                    (try? await Self.tool(["status", "slow-0"], queue: queue))?.output.contains("status: cancelled") == true
                }
                let took = ContinuousClock.now - asked
                print("shared state fleet: a running job was cancelled from another process in \(took) (tool start-ups included)")
                #expect(took < .seconds(3), "cancelled \(took) after asking (each tool run starts a process)")
                // A job submitted with a known id after its cancel: it never runs.
                let early = try await Self.tool(["cancel", "later-1"], queue: queue)
                #expect(early.output.contains("cancelled when it arrives"), "\(early.output)")
                // A store that refuses the connection: the tool says so, and why.
                let refused = try await Self.tool(["status", "quick-1"], queue: queue, environment: ["WARREN_STATE_URL": "redis://127.0.0.1:1/0"])
                #expect(refused.exit == .exited(1) && refused.output.contains("cannot be used"), "\(refused.output)")
                let marked = try await Self.tool(["status", "later-1"], queue: queue)
                #expect(marked.exit == .exited(3) && marked.output.contains("not taken by any instance yet"), "\(marked.output)")
                _ = try await Self.tool(["submit", "work", "--payload", #"{"n":2}"#, "--id", "later-1"], queue: queue)
                let late = try await Self.tool(["result", "later-1", "--wait", "--timeout", "20s"], queue: queue)
                #expect(late.exit == .exited(2) && late.output.contains("was cancelled"), "\(late.output)")
                #expect(!fleet.runs.keys.contains("later-1"), "the job cancelled before it arrived ran")
                await fleet.stopAll()
                fleet.deleteQueues(url: url)
            }
        }
    }

    /// Two instances and a batch of 200 jobs whose dependencies are spread over the five priority
    /// queues (a binary tree: each depends on its parent), so that many dependents reach the other
    /// instance than their dependency: all run, each after its dependency ended, none dead-lettered.
    @Test(.timeLimit(.minutes(5)))
    func dependenciesSpreadOverTwoInstancesRunInOrder() async throws {
        try await ServerAccess.redis.using {
            try await usingBroker {
                let url = try TestEnvironment.amqpURL
                let runs = Locked<[String: (instance: String, started: ContinuousClock.Instant, ended: ContinuousClock.Instant)]>([:])
                let fleet = try await Fleet(
                    queue: TestEnvironment.unique(), queueType: .classic, environment: ["WARREN_STATE_URL": try Self.redisURL]
                ) { call in
                    let started = ContinuousClock.now
                    try? await Task.sleep(for: .milliseconds(5))
                    if let id = call.headers["x-warren-job-id"] { runs.withLock { $0[id] = (call.path, started, .now) } }
                    return (200, "{}")
                }
                try await fleet.launch(1, urls: [url])
                try await fleet.launch(2, urls: [url])
                let producer = AMQPBroker(AMQPBroker.Configuration(url: try AMQPURL(url), queue: fleet.queue))
                try await producer.waitUntilReady(timeout: .seconds(30))
                let count = 200
                let ids = (0..<count).map { JobID("tree-\($0)-\(UUID())") }
                let jobs = (0..<count).map { index in
                    Job(id: ids[index], name: "work", priority: JobPriority.allCases[(index * 7) % JobPriority.allCases.count],
                        dependencies: index == 0 ? [] : [ids[(index - 1) / 2]])
                }
                try await producer.enqueue(jobs)
                await producer.close()
                try await waitUntil("the 200 jobs ran", within: 90) { runs.withLock { $0.count } == count }
                let done = runs.withLock { $0 }
                var crossed = 0
                for index in 1..<count {
                    let child = try #require(done[ids[index].rawValue]), parent = try #require(done[ids[(index - 1) / 2].rawValue])
                    #expect(child.started >= parent.ended, "job \(index) started before its dependency ended")
                    if child.instance != parent.instance { crossed += 1 }
                }
                print("shared state fleet: 200 jobs in a dependency tree, \(crossed) of 199 dependencies crossed instances")
                #expect(crossed > 0, "no dependency crossed instances: the test proves nothing")
                await fleet.stopAll()
                let left = try fleet.leftInQueues(url: url)
                #expect(left.ready == 0 && left.dead == 0, "none dead-lettered, none left: \(left)")
                fleet.deleteQueues(url: url)
            }
        }
    }
}
