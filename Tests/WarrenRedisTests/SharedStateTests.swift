import Foundation
import Synchronization
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenRedis
import WarrenConformance
import WarrenTestSupport

/// Several AMQP brokers on one queue sharing the Redis job-state store, as instances of `warren
/// serve` on several machines would: the private RabbitMQ and Redis of `make test`.
@Suite("instances sharing the job-state store")
struct SharedStateTests {
    struct Instance {
        let broker: AMQPBroker
        let store: RedisJobStore
        let client: RedisClient
        /// nil: a process that uses the store without running jobs (a producer, a tool).
        let pool: WorkerPool?
        let runner: Task<Void, Never>?

        func stop() async {
            pool?.shutdown()
            await runner?.value
            await broker.close()
            await client.close()
        }
    }

    static func amqpURL() throws -> AMQPURL {
        guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_AMQP_URL"] else {
            throw TestRedis.NotConfigured()
        }
        return try AMQPURL(text)
    }

    /// An instance named `name` consuming `queue`, running `registry` with `concurrency` workers.
    static func instance(_ name: String, queue: String, registry: HandlerRegistry?, concurrency: Int = 8) async throws -> Instance {
        let client = try await TestRedis.client(name)
        let store = RedisJobStore(client: client, configuration: .init(queue: queue, instance: name))
        var configuration = AMQPBroker.Configuration(url: try amqpURL(), queue: queue, prefetch: 50)
        configuration.stateStore = store
        let broker = AMQPBroker(configuration)
        try await broker.waitUntilReady(timeout: .seconds(20))
        guard let registry else { return Instance(broker: broker, store: store, client: client, pool: nil, runner: nil) }
        let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: concurrency))
        return Instance(broker: broker, store: store, client: client, pool: pool, runner: Task { await pool.run() })
    }

    static func producer(_ queue: String) async throws -> AMQPBroker {
        let broker = AMQPBroker(AMQPBroker.Configuration(url: try amqpURL(), queue: queue))
        try await broker.waitUntilReady(timeout: .seconds(20))
        return broker
    }

    static func deleteQueues(_ queue: String) throws {
        let cleaner = try RawConnection(url: try amqpURL())
        defer { cleaner.close() }
        let topology = Topology(queue: queue)
        for priority in JobPriority.allCases { try cleaner.deleteQueue(topology.brokerQueue(priority)) }
        try cleaner.deleteQueue(topology.deadQueue)
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func queueName(_ base: String) -> String { "t-\(base)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))" }

    @Test(.timeLimit(.minutes(4)))
    func eachIdRunsOnceAcrossInstancesThoughPublishedTwice() async throws {
        try await ServerAccess.redis.using {
            try await ServerAccess.rabbitMQ.using {
                let queue = Self.queueName("twice")
                defer { try? Self.deleteQueues(queue) }
                let count = 10_000
                let runs = Mutex<[JobID: Int]>([:])
                var registry = HandlerRegistry()
                try registry.registerRaw("work") { _, context in
                    runs.withLock { $0[context.id, default: 0] += 1 }
                    // Long enough that copies arrive while the first runs.
                    try await Task.sleep(for: .milliseconds(2))
                    return Data(#"{"ok":true}"#.utf8)
                }
                let a = try await Self.instance("a", queue: queue, registry: registry)
                let b = try await Self.instance("b", queue: queue, registry: registry)
                // Two producers (each one's own dedup would refuse the second copy): the same ids
                // into the normal and the high priority queue.
                let first = try await Self.producer(queue), second = try await Self.producer(queue)
                let ids = (0..<count).map { JobID("twice-\($0)") }
                for chunk in stride(from: 0, to: count, by: 500) {
                    let slice = ids[chunk..<min(count, chunk + 500)]
                    try await first.enqueue(slice.map { Job(id: $0, name: "work", priority: .normal) })
                    try await second.enqueue(slice.map { Job(id: $0, name: "work", priority: .high) })
                }
                try await waitUntil("every id ran", within: 60) { runs.withLock { $0.count } == count }
                // Every copy settled: nothing left in the queues, nothing unacked.
                try await waitUntil("the queues are empty", within: 30) {
                    guard let raw = try? RawConnection(url: try Self.amqpURL()) else { return false }
                    defer { raw.close() }
                    let topology = Topology(queue: queue)
                    return JobPriority.allCases.allSatisfy { priority in
                        ((try? raw.declareQueue(topology.brokerQueue(priority), passive: true))?.messages ?? 1) == 0
                    }
                }
                let ranTwice = runs.withLock { $0.filter { $0.value > 1 } }
                #expect(ranTwice.isEmpty, "ran more than once: \(ranTwice.prefix(10))")
                let record = try #require(try await a.store.job(ids[0]))
                #expect(record.status == .completed)
                #expect(record.result == Array(#"{"ok":true}"#.utf8))
                #expect(a.broker.stateStoreHealth?.fallbacks == 0)
                #expect(b.broker.stateStoreHealth?.fallbacks == 0)
                await first.close()
                await second.close()
                await a.stop()
                await b.stop()
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aCancelFromAnotherInstanceStopsARunningJobWithinASecond() async throws {
        try await ServerAccess.redis.using {
            try await ServerAccess.rabbitMQ.using {
                let queue = Self.queueName("cancel")
                defer { try? Self.deleteQueues(queue) }
                let started = Mutex<Set<JobID>>([])
                let stopped = Mutex<[JobID: ContinuousClock.Instant]>([:])
                var registry = HandlerRegistry()
                try registry.registerRaw("long") { _, context in
                    await context.progress(30)
                    started.withLock { _ = $0.insert(context.id) }
                    do {
                        try await Task.sleep(for: .seconds(30))
                    } catch {
                        stopped.withLock { $0[context.id] = .now }
                        throw error
                    }
                    return Data()
                }
                let runner = try await Self.instance("runner", queue: queue, registry: registry, concurrency: 1)
                // Another process: no workers, the store only.
                let other = try await Self.instance("other", queue: queue, registry: nil)
                let producer = try await Self.producer(queue)
                let running = Job(id: "cancel-running", name: "long")
                let queued = Job(id: "cancel-queued", name: "long")
                try await producer.enqueue([running])
                try await waitUntil("the first job runs", within: 20) { started.withLock { $0.contains(running.id) } }
                // Its progress, seen from the other process.
                try await waitUntil("its progress is visible elsewhere", within: 10) {
                    let record = await other.broker.storedJob(running.id)
                    return record?.status == .running && record?.progress == 30 && record?.instance == "runner"
                }
                try await producer.enqueue([queued])
                // The queued one waits behind the running one (one worker) and is cancelled first.
                try await waitUntil("the second job is held", within: 20) { runner.broker.received(queued.id) != nil }
                #expect(await other.broker.cancel(queued.id) == .cancelled)
                let asked = ContinuousClock.now
                #expect(await other.broker.cancel(running.id) == .cancelling)
                try await waitUntil("the running job stops", within: 5) { stopped.withLock { $0[running.id] != nil } }
                let latency = try #require(stopped.withLock { $0[running.id] }) - asked
                #expect(latency < .seconds(1), "stopped \(latency) after the cancel")
                try await waitUntil("both are recorded cancelled", within: 10) {
                    let records = [try? await other.store.job(running.id), try? await other.store.job(queued.id)]
                    return records.allSatisfy { $0?.status == .cancelled }
                }
                #expect(!started.withLock { $0.contains(queued.id) }, "the cancelled queued job never ran")
                await producer.close()
                await runner.stop()
                await other.stop()
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aProducerProcessGetsResultsOfJobsAnotherInstanceRan() async throws {
        try await ServerAccess.redis.using {
            try await ServerAccess.rabbitMQ.using {
                let queue = Self.queueName("results")
                defer { try? Self.deleteQueues(queue) }
                var registry = HandlerRegistry()
                try registry.registerRaw("double") { payload, context in
                    await context.progress(50)
                    let number = try JSONDecoder().decode(Int.self, from: payload)
                    return Data("\(number * 2)".utf8)
                }
                try registry.registerRaw("fail") { _, _ in throw JobRejected("no such order") }
                let worker = try await Self.instance("worker", queue: queue, registry: registry)
                // The producer: a process of its own that runs no jobs, with the store.
                let producer = try await Self.instance("producer", queue: queue, registry: nil)
                let jobs = JobQueue(broker: producer.broker)
                let doubled = try await jobs.submit(Job(name: "double", payload: Data("21".utf8)))
                let failing = try await jobs.submit(Job(name: "fail", payload: Data("{}".utf8), maxRetries: 0))
                #expect(try await doubled.result() == Data("42".utf8))
                let failure = await #expect(throws: JobFailure.self) { try await failing.result() }
                if case let .deadLettered(id, reason, _)? = failure {
                    #expect(id == failing.id)
                    #expect(reason.code == "rejected", "\(reason)")
                } else {
                    Issue.record("expected a dead letter, got \(String(describing: failure))")
                }
                // Many producers' waits at once share one subscription (a thread each would not scale).
                let many = try await jobs.submit(batch: (0..<300).map { Job(name: "double", payload: Data("\($0)".utf8)) })
                let results = try await withThrowingTaskGroup(of: Data.self) { group in
                    for handle in many { group.addTask { try await handle.result() } }
                    return try await group.reduce(into: Set<Data>()) { $0.insert($1) }
                }
                #expect(results == Set((0..<300).map { Data("\($0 * 2)".utf8) }))
                // Known to both through the store, though only one ran it.
                let stored = try #require(await producer.broker.storedJob(doubled.id))
                #expect(stored.status == .completed)
                #expect(stored.priority == .normal)
                #expect(stored.instance == "worker")
                // A job no one published or ran: unknown at once, no wait.
                #expect(await producer.broker.outcome(of: JobID("never-\(UUID())")) == nil)
                await producer.stop()
                await worker.stop()
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func dependenciesHoldAcrossInstancesAndFailuresReachDependentsElsewhere() async throws {
        try await ServerAccess.redis.using {
            try await ServerAccess.rabbitMQ.using {
                let queue = Self.queueName("deps")
                defer { try? Self.deleteQueues(queue) }
                let ranOn = Mutex<[JobID: (instance: String, started: ContinuousClock.Instant, ended: ContinuousClock.Instant)]>([:])
                func registry(_ instance: String) throws -> HandlerRegistry {
                    var registry = HandlerRegistry()
                    try registry.registerRaw("step") { _, context in
                        let started = ContinuousClock.now
                        try await Task.sleep(for: .milliseconds(3))
                        ranOn.withLock { $0[context.id] = (instance, started, .now) }
                        return Data()
                    }
                    try registry.registerRaw("break") { _, _ in throw JobRejected("broken on purpose") }
                    return registry
                }
                let a = try await Self.instance("a", queue: queue, registry: try registry("a"), concurrency: 4)
                let b = try await Self.instance("b", queue: queue, registry: try registry("b"), concurrency: 4)
                let producer = try await Self.instance("producer", queue: queue, registry: nil)
                // A binary tree of 200 steps (each depends on its parent), published together: the
                // five queues and two instances deliver them in any order, to either instance.
                var random = SplitMix64(seed: 15)
                let count = 200
                let ids = (0..<count).map { JobID("step-\($0)-\(UUID())") }
                var tree: [Job] = []
                for index in 0..<count {
                    let priority = JobPriority.allCases[Int.random(in: 0..<JobPriority.allCases.count, using: &random)]
                    tree.append(Job(id: ids[index], name: "step", priority: priority, dependencies: index == 0 ? [] : [ids[(index - 1) / 2]]))
                }
                // And 20 pairs whose first fails: the second is dead-lettered naming it, wherever it lands.
                var broken: [(parent: JobID, child: JobID)] = []
                var pairs: [Job] = []
                for index in 0..<20 {
                    let parent = JobID("broken-\(index)-\(UUID())"), child = JobID("orphan-\(index)-\(UUID())")
                    broken.append((parent, child))
                    pairs.append(Job(id: parent, name: "break", priority: index % 2 == 0 ? .low : .high, maxRetries: 0))
                    pairs.append(Job(id: child, name: "step", priority: index % 2 == 0 ? .high : .low, dependencies: [parent]))
                }
                let jobs = JobQueue(broker: producer.broker)
                _ = try await jobs.submit(batch: tree + pairs)
                try await waitUntil("the tree ran", within: 60) { ranOn.withLock { $0.count } == count }
                let runs = ranOn.withLock { $0 }
                var crossed = 0
                for index in 1..<count {
                    let child = try #require(runs[ids[index]]), parent = try #require(runs[ids[(index - 1) / 2]])
                    #expect(child.started >= parent.ended, "step \(index) started before its parent ended")
                    if child.instance != parent.instance { crossed += 1 }
                }
                #expect(crossed > 0, "no dependency crossed instances: the test proves nothing")
                print("shared state: \(crossed) of \(count - 1) dependencies crossed instances; a ran \(runs.values.filter { $0.instance == "a" }.count)")
                for (parent, child) in broken {
                    let outcome = await producer.broker.outcome(of: child)
                    guard case let .deadLettered(reason, _)? = outcome else {
                        Issue.record("\(child): expected a dead letter, got \(String(describing: outcome))")
                        continue
                    }
                    #expect(reason.code == "dependency_failed" || reason.description.contains(parent.rawValue), "\(reason)")
                    #expect(runs[child] == nil, "a dependent of a failed job ran")
                }
                // Nothing dead-lettered from the tree: the dead queue holds the 20 pairs only.
                try await waitUntil("40 dead letters", within: 20) {
                    guard let raw = try? RawConnection(url: try Self.amqpURL()) else { return false }
                    defer { raw.close() }
                    return (try? raw.declareQueue(Topology(queue: queue).deadQueue, passive: true))?.messages == 40
                }
                await producer.stop()
                await a.stop()
                await b.stop()
            }
        }
    }

    /// A job held on one instance until its dependency ends (here one no instance has seen) is
    /// cancelled from another process: it leaves at once, cancelled, and never runs.
    @Test(.timeLimit(.minutes(4)))
    func aCancelReachesAJobHeldForItsDependency() async throws {
        try await ServerAccess.redis.using {
            try await ServerAccess.rabbitMQ.using {
                let queue = Self.queueName("held")
                defer { try? Self.deleteQueues(queue) }
                let ran = Mutex<Set<JobID>>([])
                var registry = HandlerRegistry()
                try registry.registerRaw("step") { _, context in
                    ran.withLock { _ = $0.insert(context.id) }
                    return Data()
                }
                let holder = try await Self.instance("holder", queue: queue, registry: registry)
                let other = try await Self.instance("other", queue: queue, registry: nil)
                // As a producer in another language would: a plain message naming a dependency.
                let raw = try RawConnection(url: try Self.amqpURL())
                defer { raw.close() }
                let child = JobID("held-\(UUID())")
                try raw.publish(OutgoingMessage(
                    exchange: Topology.exchange, routingKey: Topology(queue: queue).routingKey(.normal),
                    properties: MessageProperties(
                        contentType: "application/json", headers: [WireFormat.Header.dependencies: .string("ghost-\(UUID())")],
                        deliveryMode: 2, messageID: child.rawValue, type: "step"),
                    body: Array("{}".utf8)))
                try await waitUntil("the job is held for its dependency", within: 20) {
                    (try? await holder.store.job(child))?.status == .queued
                }
                #expect(await other.broker.cancel(child) == .cancelled)
                try await waitUntil("it is recorded cancelled", within: 10) {
                    (try? await other.store.job(child))?.status == .cancelled
                }
                #expect(await holder.broker.outcome(of: child) == .cancelled, "known cancelled where it was held")
                #expect(ran.withLock { $0.isEmpty }, "the cancelled job ran")
                // A message that is not a job, with an id: its dead letter is known everywhere.
                try raw.publish(OutgoingMessage(
                    exchange: Topology.exchange, routingKey: Topology(queue: queue).routingKey(.normal),
                    properties: MessageProperties(contentType: "application/json", deliveryMode: 2, messageID: "not-json-\(child)", type: "step"),
                    body: Array("not json".utf8)))
                try await waitUntil("the unreadable message is recorded dead-lettered", within: 10) {
                    (try? await other.store.job(JobID("not-json-\(child)")))?.status == .deadLettered
                }
                await other.stop()
                await holder.stop()
                // Its message was acked: once the holder is gone, nothing came back to the queue.
                let counter = try RawConnection(url: try Self.amqpURL())
                defer { counter.close() }
                #expect(try counter.declareQueue(Topology(queue: queue).brokerQueue(.normal), passive: true).messages == 0)
            }
        }
    }

    /// A dependency fails its first attempt on one instance and its retry runs on another: the jobs
    /// waiting for it on the first go on once the retry completes there (or are dead-lettered
    /// naming it once it fails for good), not when their wait runs out.
    @Test(.timeLimit(.minutes(4)))
    func dependentsFollowADependencyWhoseRetryRanElsewhere() async throws {
        try await ServerAccess.redis.using {
            try await ServerAccess.rabbitMQ.using {
                let queue = Self.queueName("retried")
                defer { try? Self.deleteQueues(queue) }
                let runs = Mutex<[JobID: [(instance: String, attempt: Int, at: ContinuousClock.Instant)]]>([:])
                func registry(_ instance: String) throws -> HandlerRegistry {
                    var registry = HandlerRegistry()
                    try registry.registerRaw("flaky") { _, context in
                        runs.withLock { $0[context.id, default: []].append((instance, context.attempt, .now)) }
                        if context.attempt == 1 { throw Failure("the first attempt fails") }
                        return Data()
                    }
                    try registry.registerRaw("broken") { _, context in
                        runs.withLock { $0[context.id, default: []].append((instance, context.attempt, .now)) }
                        throw Failure("every attempt fails")
                    }
                    try registry.registerRaw("step") { _, context in
                        runs.withLock { $0[context.id, default: []].append((instance, context.attempt, .now)) }
                        return Data()
                    }
                    return registry
                }
                let a = try await Self.instance("a", queue: queue, registry: try registry("a"), concurrency: 4)
                let b = try await Self.instance("b", queue: queue, registry: try registry("b"), concurrency: 4)
                let producer = try await Self.instance("producer", queue: queue, registry: nil)
                var jobs: [Job] = [], children: [(parent: JobID, child: JobID, fails: Bool)] = []
                for index in 0..<12 {
                    let fails = index % 3 == 0
                    let parent = Job(id: JobID("parent-\(index)-\(UUID())"), name: fails ? "broken" : "flaky", maxRetries: 1)
                    jobs.append(parent)
                    for child in 0..<4 {
                        let id = JobID("child-\(index)-\(child)-\(UUID())")
                        jobs.append(Job(id: id, name: "step", priority: child % 2 == 0 ? .high : .low, dependencies: [parent.id]))
                        children.append((parent.id, id, fails))
                    }
                }
                _ = try await JobQueue(broker: producer.broker).submit(batch: jobs)
                for (parent, child, fails) in children {
                    let outcome = await producer.broker.outcome(of: child)
                    if fails {
                        guard case let .deadLettered(reason, _)? = outcome else {
                            Issue.record("\(child): expected a dead letter, got \(String(describing: outcome))")
                            continue
                        }
                        #expect(reason == .dependencyFailed(parent, status: .deadLettered), "\(reason)")
                    } else {
                        #expect(outcome == .completed(Data()), "\(child): \(String(describing: outcome))")
                        let all = runs.withLock { $0 }
                        if let started = all[child]?.first?.at, let done = all[parent]?.last(where: { $0.attempt == 2 })?.at {
                            #expect(started >= done, "\(child) started before its parent's retry ended")
                        }
                    }
                }
                let crossed = runs.withLock { runs in
                    runs.values.filter { $0.count == 2 && $0[0].instance != $0[1].instance }.count
                }
                print("shared state: \(crossed) of 12 retried dependencies ran their retry on the other instance")
                #expect(crossed > 0, "no retry crossed instances: the test proves nothing")
                await producer.stop()
                await a.stop()
                await b.stop()
            }
        }
    }
}
