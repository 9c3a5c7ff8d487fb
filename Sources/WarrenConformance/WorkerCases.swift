#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Warren

struct Greeting: Codable, Sendable, Equatable {
    var name: String
    var times: Int
}

struct Flaky: Error, CustomStringConvertible {
    let description: String
}

/// Runs a worker pool over the broker while `body` runs, then shuts it down.
func withPool(
    _ broker: any Broker, _ registry: HandlerRegistry,
    _ configuration: WorkerPoolConfiguration = WorkerPoolConfiguration(concurrency: 4),
    _ body: (JobQueue, WorkerPool) async throws -> Void
) async throws {
    let pool = WorkerPool(broker: broker, registry: registry, configuration: configuration)
    let runner = Task { await pool.run() }
    do {
        try await body(JobQueue(broker: broker), pool)
    } catch {
        pool.shutdown()
        await runner.value
        throw error
    }
    pool.shutdown()
    await runner.value
}

extension ConformanceSuite {
    static let greet = JobKind<Greeting, String>("conformance.greet")
    static let sleepy = JobKind<Nothing, Nothing>("conformance.sleepy")

    static let workerCases: [ConformanceCase] = [
        test("after a job past its deadline, lone jobs still start at once on an idle pool") { broker in
            // The core once took such a job out of the ready count twice: parked slots then slept
            // through every other lone job until the next message came.
            let started = Counter()
            var registry = HandlerRegistry()
            try registry.registerRaw("conformance.lone") { _, _ in
                _ = started.increment()
                return Data("{}".utf8)
            }
            try await withPool(broker, registry, WorkerPoolConfiguration(concurrency: 2)) { _, _ in
                let warmUp = job("conformance.lone")
                try await broker.enqueue([warmUp])
                _ = try await outcome(broker, warmUp.id)
                var late = job("conformance.lone")
                late.deadline = Date().addingTimeInterval(-5)
                try await broker.enqueue([late])
                guard case .deadLettered(.deadline, _) = try await outcome(broker, late.id) else {
                    throw ConformanceFailure("a job past its deadline was not dead-lettered with reason deadline")
                }
                for index in 1...6 {
                    let lone = job("conformance.lone")
                    let sent = ContinuousClock.now
                    try await broker.enqueue([lone])
                    guard case .completed = try await outcome(broker, lone.id, within: 5) else {
                        throw ConformanceFailure("lone job \(index) did not complete")
                    }
                    let took = ContinuousClock.now - sent
                    try expect(took < .seconds(2), "lone job \(index) took \(took) to run on an idle pool")
                }
                try expectEqual(started.current, 7, "handler runs")
            }
        },
        test("a name's own limit holds within the pool's, and priority order holds across names") { broker in
            let running = Counter(), most = Counter(), order = Locked<[String]>([])
            var registry = HandlerRegistry()
            for name in ["conformance.wide", "conformance.other"] {
                try registry.registerRaw(name) { _, context in
                    let now = running.increment()
                    if now > most.current { _ = most.add(now - most.current) }
                    order.withLock { $0.append(context.id.rawValue) }
                    try? await Task.sleep(for: .milliseconds(30))
                    _ = running.add(-1)
                    return Data("{}".utf8)
                }
            }
            // Queued before the pool starts: the pool sees them all at once.
            let jobs = [
                job("conformance.wide", id: "w-low-\(UUID().uuidString)", priority: .low),
                job("conformance.other", id: "o-normal-\(UUID().uuidString)", priority: .normal),
                job("conformance.wide", id: "w-high-\(UUID().uuidString)", priority: .high),
                job("conformance.wide", id: "w-critical-\(UUID().uuidString)", priority: .critical),
            ]
            for job in jobs { try await broker.enqueue([job]) }
            let configuration = WorkerPoolConfiguration(concurrency: 1, limits: ["conformance.wide": 4])
            try await withPool(broker, registry, configuration) { _, _ in
                for job in jobs { _ = try await outcome(broker, job.id) }
            }
            try expectEqual(most.current, 1, "most jobs running at once under a pool limit of 1")
            try expectEqual(order.withLock { $0.map { $0.split(separator: "-").prefix(2).joined(separator: "-") } },
                            ["w-critical", "w-high", "o-normal", "w-low"], "start order")
        },
        test("typed handlers: the handle returns the output, a throwing handler fails only its job") { broker in
            var registry = HandlerRegistry()
            try registry.register(greet) { input, _ in
                if input.name == "boom" { throw Flaky(description: "cannot greet boom") }
                return String(repeating: "hello \(input.name) ", count: input.times)
            }
            try await withPool(broker, registry) { queue, _ in
                let good = try await queue.submit(greet, Greeting(name: "ada", times: 2))
                let bad = try await queue.submit(greet, Greeting(name: "boom", times: 1), JobOptions(maxRetries: 1))
                try expectEqual(try await within(10, "result") { try await good.result() }, "hello ada hello ada ", "output")
                do {
                    _ = try await within(10, "failure") { try await bad.result() }
                    throw ConformanceFailure("the failing job reported success")
                } catch let failure as JobFailure {
                    guard case let .deadLettered(_, reason, errors) = failure else { throw ConformanceFailure("\(failure)") }
                    try expectEqual(reason, .retriesExhausted(attempts: 2, lastError: "cannot greet boom"), "reason")
                    try expectEqual(errors.count, 2, "errors kept")
                }
            }
        },
        test("unknown names and undecodable payloads are dead-lettered with a reason, never retried") { broker in
            var registry = HandlerRegistry()
            try registry.register(greet) { input, _ in input.name }
            try await withPool(broker, registry) { queue, _ in
                let stranger = Job(name: "conformance.no-such-job", maxRetries: 5)
                let wrongType = Job(name: greet.name, payload: Data(#"{"name":"x","times":"two"}"#.utf8), maxRetries: 5)
                let notJSON = Job(name: greet.name, payload: Data("not json".utf8), maxRetries: 5)
                let fine = try queue.makeJob(greet, Greeting(name: "still works", times: 1))
                try await queue.submit(batch: [stranger, wrongType, notJSON, fine])
                try expectEqual(try await outcome(broker, stranger.id),
                                .deadLettered(.unknownJobName("conformance.no-such-job"), errors: []), "unknown name")
                guard case let .deadLettered(.undecodablePayload(detail), errors) = try await outcome(broker, wrongType.id) else {
                    throw ConformanceFailure("wrong type not dead-lettered as undecodable")
                }
                try expect(detail.contains("times"), "the reason names the field: \(detail)")
                try expectEqual(errors.count, 0, "no retries for bad input")
                // A broker that checks the body is JSON on arrival says so as malformed_message (AMQP).
                switch try await outcome(broker, notJSON.id) {
                case .deadLettered(.undecodablePayload, _), .deadLettered(.malformedMessage, _): break
                default: throw ConformanceFailure("non-JSON payload not dead-lettered as undecodable or malformed")
                }
                try expectEqual(try await outcome(broker, fine.id), .completed(Data(#""still works""#.utf8)), "good job")
            }
        },
        test("a handler past its timeout is cancelled and the job times out") { broker in
            var registry = HandlerRegistry()
            let sawCancellation = Counter()
            try registry.register(sleepy) { _, _ in
                do { try await Task.sleep(for: .seconds(30)) } catch { _ = sawCancellation.increment(); throw error }
                return Nothing()
            }
            try await withPool(broker, registry) { queue, _ in
                let log = EventLog(broker)
                let started = Date()
                let handle = try await queue.submit(sleepy, Nothing(), JobOptions(timeout: .milliseconds(200), maxRetries: 0))
                try await log.wait("timed out") { $0.id == handle.id && $0.label == "timed_out" }
                guard case let .deadLettered(reason, errors) = try await outcome(broker, handle.id) else {
                    throw ConformanceFailure("a timed-out job with no retries left must be dead-lettered")
                }
                try expectEqual(reason.code, "retries_exhausted", "reason")
                try expect(errors.first?.timedOut == true, "the attempt is recorded as timed out")
                let elapsed = Date().timeIntervalSince(started)
                try expect(elapsed >= 0.19 && elapsed < 5, "timed out after \(elapsed) s")
                try await within(5, "the handler to see cancellation") { while sawCancellation.current == 0 { await Task.yield() } }
            }
        },
        test("cancelling a running job cancels its handler cooperatively") { broker in
            var registry = HandlerRegistry()
            try registry.register(sleepy) { _, context in
                await context.progress(10)
                try await Task.sleep(for: .seconds(30))
                return Nothing()
            }
            try await withPool(broker, registry) { queue, pool in
                let log = EventLog(broker)
                let handle = try await queue.submit(sleepy, Nothing(), JobOptions(maxRetries: 3))
                try await log.wait("progress") { $0.id == handle.id && $0.kind == .progress(10) }
                try expectEqual(await handle.cancel(), .cancelling, "cancel result")
                try expectEqual(try await outcome(broker, handle.id), .cancelled, "outcome")
                try await within(5, "the slot to free") { while pool.running > 0 { await Task.yield() } }
            }
        },
        test("a retry that starts while its timed-out attempt still runs: each holds its own slot until it ends") { broker in
            var registry = HandlerRegistry()
            let firstAttemptMayReturn = Latch(1)
            try registry.registerRaw("conformance.stubborn") { payload, context in
                // The first attempt ignores the cancellation its timeout sends.
                if context.attempt == 1 { await firstAttemptMayReturn.wait() }
                return payload
            }
            try await withPool(broker, registry) { queue, pool in
                // Whatever happens below, the stubborn attempt may return before the pool stops.
                defer { firstAttemptMayReturn.countDown() }
                let log = EventLog(broker)
                let job = Job(name: "conformance.stubborn", payload: Data("2".utf8), timeout: .milliseconds(200), maxRetries: 1)
                try await queue.submit(batch: [job])
                try await log.wait("the first attempt to time out") { $0.id == job.id && $0.kind == .timedOut(attempt: 1) }
                try expectEqual(try await outcome(broker, job.id), .completed(Data("2".utf8)), "the second attempt's result")
                try await within(5, "only the stubborn first attempt to be left") { while pool.running != 1 { await Task.yield() } }
                firstAttemptMayReturn.countDown()
                try await within(5, "both slots to free") { while pool.running > 0 { await Task.yield() } }
            }
        },
        test("a slot runs ready jobs one after another; a stop there ends only its own job") { broker in
            var registry = HandlerRegistry()
            let gate = Latch(1), sawCancellation = Counter()
            try registry.registerRaw("conformance.gate") { _, _ in
                await gate.wait()
                return Data()
            }
            try registry.registerRaw("conformance.chain") { payload, _ in
                if payload == Data(#""stuck""#.utf8) {
                    do { try await Task.sleep(for: .seconds(30)) } catch { _ = sawCancellation.increment(); throw error }
                }
                return Data(Task.isCancelled ? #""cancelled""#.utf8 : #""clear""#.utf8)
            }
            try await withPool(broker, registry, WorkerPoolConfiguration(concurrency: 1)) { queue, pool in
                defer { gate.countDown() }
                // The gate holds the only slot until the three jobs are all ready here, so they
                // follow it in that slot: highest priority first.
                try await queue.submit(batch: [Job(name: "conformance.gate")])
                try await within(5, "the gate to start") { while pool.running < 1 { await Task.yield() } }
                let first = Job(name: "conformance.chain", payload: Data(#""first""#.utf8), priority: .critical)
                let stuck = Job(name: "conformance.chain", payload: Data(#""stuck""#.utf8), priority: .high,
                                timeout: .milliseconds(200), maxRetries: 0)
                let last = Job(name: "conformance.chain", payload: Data(#""last""#.utf8), priority: .normal)
                try await queue.submit(batch: [first, stuck, last])
                try await within(10, "the three jobs to be ready") { while await broker.statistics().depth < 3 { await Task.yield() } }
                gate.countDown()
                try expectEqual(try await outcome(broker, first.id), .completed(Data(#""clear""#.utf8)), "the first job")
                guard case let .deadLettered(reason, errors) = try await outcome(broker, stuck.id) else {
                    throw ConformanceFailure("the stuck job must time out and, with no retries, be dead-lettered")
                }
                try expectEqual(reason.code, "retries_exhausted", "reason")
                try expect(errors.first?.timedOut == true, "the attempt is recorded as timed out")
                // Its handler must see the cancellation, or the slot stays taken for 30 s.
                try expectEqual(try await outcome(broker, last.id), .completed(Data(#""clear""#.utf8)),
                                "the job after the stopped one runs in a task nobody cancelled")
                try expectEqual(sawCancellation.current, 1, "the stuck handler was cancelled")
            }
        },
        test("never more handlers at once than the concurrency limit") { broker in
            var registry = HandlerRegistry()
            let now = Counter(), peak = Locked(0)
            // The first three wait for each other: the limit is reached however slowly jobs arrive
            // (a broker publishing one confirmed message at a time), and never passed.
            let firstThree = Latch(3)
            try registry.register(sleepy) { _, _ in
                let running = now.increment()
                peak.withLock { $0 = max($0, running) }
                firstThree.countDown()
                await firstThree.wait()
                try await Task.sleep(for: .milliseconds(5))
                _ = now.decrementAndGet()
                return Nothing()
            }
            try await withPool(broker, registry, WorkerPoolConfiguration(concurrency: 3)) { queue, _ in
                // One job first, so the burst below arrives while every slot waits for work: all
                // three must be woken by it, or the first three wait for each other forever.
                let warmUp = Job(name: "conformance.warm-up")
                try await queue.submit(batch: [warmUp])
                guard case .deadLettered(.unknownJobName, _) = try await outcome(broker, warmUp.id) else {
                    throw ConformanceFailure("a job with no handler must be dead-lettered")
                }
                let jobs = try (0..<30).map { _ in try queue.makeJob(sleepy, Nothing()) }
                try await queue.submit(batch: jobs)
                for job in jobs { try expectEqual(try await outcome(broker, job.id), .completed(Data("{}".utf8)), "job") }
                try expectEqual(peak.withLock { $0 }, 3, "peak concurrency")
            }
        },
        test("a critical job starts at once in a reserved slot while low jobs fill the pool") { broker in
            var registry = HandlerRegistry()
            let gate = Latch(1)
            try registry.register(sleepy) { _, _ in
                await gate.wait()
                return Nothing()
            }
            try registry.register(greet) { input, _ in input.name }
            try await withPool(broker, registry, WorkerPoolConfiguration(concurrency: 2, reservedForCritical: 1)) { queue, pool in
                let log = EventLog(broker)
                var lows: [Job] = []
                for _ in 0..<20 { lows.append(try queue.makeJob(sleepy, Nothing(), JobOptions(priority: .low))) }
                try await queue.submit(batch: lows)
                try await within(5, "the pool to fill") { while pool.running < 2 { await Task.yield() } }
                try await within(5, "two low jobs to start") {
                    while await log.all().filter({ $0.label == "started" }).count < 2 { await Task.yield() }
                }
                let urgent = try await queue.submit(greet, Greeting(name: "now", times: 1), JobOptions(priority: .critical))
                try expectEqual(try await within(5, "the critical job") { try await urgent.result() }, "now", "critical output")
                let starts = await log.all().filter { $0.label == "started" }.dropFirst(2)
                try expect(starts.map(\.id) == [urgent.id], "only the critical job started meanwhile: \(starts)")
                try expectEqual(await broker.statistics().depthByPriority[.low], 18, "low jobs still waiting")
                gate.countDown()
                for low in lows { _ = try await outcome(broker, low.id) }
            }
        },
        test("worker groups: jobs run where their capabilities are; impossible ones are dead-lettered") { broker in
            // Jobs run one at a time here, so the only busy group while a handler runs is its own.
            let poolBox = Locked<WorkerPool?>(nil)
            let ranIn = Locked<[JobID: [String]]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw("conformance.where") { payload, context in
                let busy = (poolBox.withLock { $0 }?.loads ?? []).filter { $0.busy > 0 }.map(\.group.name)
                ranIn.withLock { $0[context.id] = busy }
                return payload
            }
            let groups = [
                WorkerGroup(name: "cpu", concurrency: 2, capabilities: ["cpu"]),
                WorkerGroup(name: "gpu", concurrency: 1, capabilities: ["cpu", "gpu"]),
            ]
            try await withPool(broker, registry, WorkerPoolConfiguration(groups: groups, routing: .roundRobin)) { queue, pool in
                poolBox.withLock { $0 = pool }
                var expected: [(Job, Set<String>)] = []
                for index in 0..<6 {
                    expected.append((Job(name: "conformance.where", requiredCapabilities: ["gpu"]), ["gpu"]))
                    expected.append((Job(name: "conformance.where", requiredCapabilities: index.isMultiple(of: 2) ? ["cpu"] : []), ["cpu", "gpu"]))
                }
                for (job, _) in expected {
                    try await queue.submit(batch: [job])
                    try expectEqual(try await outcome(broker, job.id), .completed(job.payload), "job requiring \(job.requiredCapabilities)")
                    try await within(5, "the slot to free") { while pool.running > 0 { await Task.yield() } }
                }
                let tpu = Job(name: "conformance.where", requiredCapabilities: ["tpu"])
                try await queue.submit(batch: [tpu])
                try expectEqual(try await outcome(broker, tpu.id), .deadLettered(.noCapableWorker(required: ["tpu"]), errors: []), "tpu job")
                let ran = ranIn.withLock { $0 }
                for (job, capable) in expected {
                    let groups = ran[job.id] ?? []
                    try expect(groups.count == 1 && capable.contains(groups[0]),
                               "a job requiring \(job.requiredCapabilities.sorted()) ran in \(groups), not one of \(capable.sorted())")
                }
                try expect(ran[tpu.id] == nil, "the impossible job ran")
            }
        },
        test("worker groups under load: every job in a capable group, no group past its concurrency") { broker in
            // Capabilities: a job needing "a" runs only in group a, "b" only in b, "c" only in c,
            // "x" in a or b. (A job needing nothing could run anywhere: the case above checks those;
            // here each job's possible groups are few enough that a misplaced one shows.)
            let groups = [
                WorkerGroup(name: "a", concurrency: 2, capabilities: ["x", "a"]),
                WorkerGroup(name: "b", concurrency: 3, capabilities: ["x", "b"]),
                WorkerGroup(name: "c", concurrency: 2, capabilities: ["c"]),
            ]
            struct Running { var byNeed: [String: Int] = [:]; var total = 0 }
            let poolBox = Locked<WorkerPool?>(nil)
            let running = Locked(Running())
            let problems = Locked<[String]>([])
            let peaks = Locked<[String: Int]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw("conformance.spread") { payload, context in
                let need = context.metadata["need"] ?? ""
                running.withLock { now in
                    now.byNeed[need, default: 0] += 1
                    now.total += 1
                    // The pool counts a job busy in its group from before its handler starts until
                    // after it returns, so each group's count covers the handlers that can run only there.
                    let loads = Dictionary(uniqueKeysWithValues: (poolBox.withLock { $0 }?.loads ?? []).map { ($0.group.name, $0) })
                    func busy(_ name: String) -> Int { loads[name]?.busy ?? 0 }
                    var found: [String] = []
                    for load in loads.values where load.busy > load.group.concurrency {
                        found.append("group \(load.group.name) ran \(load.busy) > \(load.group.concurrency)")
                    }
                    for name in ["a", "b", "c"] where (now.byNeed[name] ?? 0) > busy(name) {
                        found.append("\(now.byNeed[name] ?? 0) jobs needing \(name) ran with \(busy(name)) busy in group \(name)")
                    }
                    let aOrB = ["a", "b", "x"].reduce(0) { $0 + (now.byNeed[$1] ?? 0) }
                    if aOrB > busy("a") + busy("b") { found.append("\(aOrB) jobs for groups a and b ran with \(busy("a") + busy("b")) busy there") }
                    if now.total > 7 { found.append("\(now.total) handlers at once in a pool of 7") }
                    if (now.byNeed["c"] ?? 0) > 2 { found.append("\(now.byNeed["c"] ?? 0) jobs needing c at once in a group of 2") }
                    if !found.isEmpty { problems.withLock { $0 += found } }
                    peaks.withLock { peak in for (name, load) in loads { peak[name] = max(peak[name] ?? 0, load.busy) } }
                }
                try? await Task.sleep(for: .milliseconds(Int.random(in: 1...8)))
                running.withLock { now in
                    now.byNeed[need, default: 0] -= 1
                    now.total -= 1
                }
                return payload
            }
            let needs = ["a", "b", "c", "x", "a", "b", "c", "b", "c", "a", "b"]
            var jobs: [Job] = []
            for index in 0..<132 {
                let need = needs[index % needs.count]
                jobs.append(Job(name: "conformance.spread", requiredCapabilities: need.isEmpty ? [] : [need], metadata: ["need": need]))
            }
            let impossible = (0..<3).map { _ in Job(name: "conformance.spread", requiredCapabilities: ["a", "b"]) }
            try await withPool(broker, registry, WorkerPoolConfiguration(groups: groups)) { queue, pool in
                poolBox.withLock { $0 = pool }
                for start in stride(from: 0, to: jobs.count, by: 12) {
                    try await queue.submit(batch: Array(jobs[start..<min(start + 12, jobs.count)]))
                }
                try await queue.submit(batch: impossible)
                for job in jobs {
                    try expectEqual(try await outcome(broker, job.id, within: 30), .completed(job.payload), "job needing \(job.requiredCapabilities)")
                }
                for job in impossible {
                    try expectEqual(try await outcome(broker, job.id), .deadLettered(.noCapableWorker(required: ["a", "b"]), errors: []), "impossible job")
                }
            }
            let found = problems.withLock { $0 }
            try expect(found.isEmpty, "\(found.count) violations, first: \(found.prefix(3))")
            let peak = peaks.withLock { $0 }
            try expect(peak["a"] ?? 0 >= 1 && peak["b"] ?? 0 >= 1 && peak["c"] ?? 0 >= 1, "every group ran jobs: \(peak)")
        },
    ]
}


extension Counter {
    func decrementAndGet() -> Int { add(-1) }
}
