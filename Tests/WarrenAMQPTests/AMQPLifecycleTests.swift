import Foundation
import Testing
import Warren
@testable import WarrenAMQP
#if canImport(Glibc)
import Glibc
#endif

/// Crashes, broker restarts, graceful shutdown and lifecycle events, against the real broker.
@Suite("AMQP lifecycle")
struct AMQPLifecycleTests {
    static let jobName = "crash.work"

    /// Publishes `count` persistent jobs through a producer-only broker, in batches.
    func publish(_ count: Int, to queue: String) async throws -> Set<String> {
        let producer = AMQPBroker(.init(url: try TestBroker.url(), queue: queue))
        try await producer.waitUntilReady(timeout: .seconds(20))
        let jobQueue = JobQueue(broker: producer)
        var ids = Set<String>()
        for start in stride(from: 0, to: count, by: 500) {
            let jobs = (start..<min(count, start + 500)).map { _ in Job(name: Self.jobName) }
            try await jobQueue.submit(batch: jobs)
            ids.formUnion(jobs.map(\.id.rawValue))
        }
        await producer.close()
        return ids
    }

    func queueCounts(_ queue: String) throws -> (messages: Int, consumers: Int) {
        let inspector = try RawConnection(url: try TestBroker.url())
        defer { inspector.close() }
        return try inspector.declareQueue(queue, passive: true)
    }

    @Test(.timeLimit(.minutes(4)))
    func aKilledConsumerLosesNoJobAndRepeatsAtMostItsPrefetchWindow() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let prefetch = 100
            let ids = try await publish(5_000, to: name)
            // The URL as the environment gives it (its description hides the password).
            let url = ProcessInfo.processInfo.environment["WARREN_TEST_AMQP_URL"] ?? ""
            let arguments = [url, name, "\(prefetch)", "16", "2"]
            let worker = ChildProcess.builtProduct("WarrenTestWorker")
            let first = try ChildProcess(worker, arguments, keepStderr: true)
            try await waitUntil("1,500 jobs run by the first worker", within: 60) { first.lines.count >= 1_500 }
            first.signal(SIGKILL)
            let firstStatus = try await first.exit(within: 10)
            #expect(firstStatus == .signalled(SIGKILL))
            let second = try ChildProcess(worker, arguments, keepStderr: true)
            let runs: @Sendable () -> [String] = { first.lines + second.lines }
            try await waitUntil("every job run", within: 90) { Set(runs()).count == ids.count }
            let normal = Topology(queue: name).brokerQueue(.normal)
            try await waitUntil("the queue to drain", within: 30) { (try? self.queueCounts(normal).messages) == 0 }
            // Graceful exit of the second worker: nothing is left to hand back, it exits 0.
            second.signal(SIGTERM)
            #expect(try await second.exit(within: 30) == .exited(0))
            #expect(second.lines.last == "drained")
            let all = runs().filter { $0 != "drained" }
            #expect(Set(all) == ids, "no job lost")
            let duplicates = all.count - Set(all).count
            #expect(duplicates <= prefetch, "\(duplicates) jobs ran twice; at most the \(prefetch) unacked at the kill may")
            #expect(try queueCounts(normal).messages == 0)
            try TestBroker.deleteQueues([name])
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func everyJobCompletesWhenTheBrokerRestartsMidRun() async throws {
        try await usingBroker(exclusive: true) {
            let name = TestBroker.unique()
            let ids = try await publish(5_000, to: name)
            let broker = AMQPBroker(.init(url: try TestBroker.url(), queue: name, prefetch: 100))
            try await broker.waitUntilReady(timeout: .seconds(20))
            let completed = Locked<[String: Int]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw(Self.jobName) { payload, context in
                // About 300 jobs/s: the run lasts about 16 s, well past the time the broker takes to
                // stop even on a busy machine (at 600 jobs/s, a stop slowed by a build alongside
                // came after the last job).
                try await Task.sleep(for: .milliseconds(50))
                completed.withLock { $0[context.id.rawValue, default: 0] += 1 }
                return payload
            }
            let doneAtLoss = Locked<Int?>(nil)
            let updates = broker.connectionUpdates
            let watcher = Task {
                for await status in updates {
                    if case .disconnected = status, doneAtLoss.withLock({ $0 }) == nil {
                        doneAtLoss.withLock { $0 = completed.withLock { $0.count } }
                    }
                }
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 16))
            let service = Task { await broker.run(pool) }
            try await waitUntil("1,000 jobs", within: 60) { completed.withLock { $0.count } >= 1_000 }
            try await TestBroker.restart()
            try await waitUntil("every job to complete", within: 150) { completed.withLock { $0.count } == ids.count }
            #expect(Set(completed.withLock { $0.keys }) == ids)
            let lostAfter = doneAtLoss.withLock { $0 }
            #expect(lostAfter != nil && lostAfter! < ids.count, "the connection was lost mid-run (after \(lostAfter.map(String.init) ?? "none") jobs)")
            try await waitUntil("the consumer to be connected again", within: 30) { broker.isReady }
            let normal = broker.topology.brokerQueue(.normal)
            try await waitUntil("the queue to drain", within: 30) { (try? self.queueCounts(normal).messages) == 0 }
            let repeated = completed.withLock { $0.values.filter { $0 > 1 }.count }
            #expect(repeated <= 100, "\(repeated) jobs ran twice (at most the prefetch window unacked at the restart)")
            watcher.cancel()
            service.cancel()
            await service.value
            try TestBroker.deleteQueues([name])
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func gracefulShutdownFinishesRunningJobsAndHandsBackTheRest() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let ids = try await publish(400, to: name)
            let broker = AMQPBroker(.init(url: try TestBroker.url(), queue: name, prefetch: 50))
            try await broker.waitUntilReady(timeout: .seconds(20))
            let completed = Locked<[String]>([])
            let started = Locked(0)
            var registry = HandlerRegistry()
            try registry.registerRaw(Self.jobName) { payload, context in
                started.withLock { $0 += 1 }
                // Not cancellable on purpose: a running job must be let finish, not stopped.
                let until = ContinuousClock.now + .milliseconds(100)
                while ContinuousClock.now < until { try? await Task.sleep(for: .milliseconds(10)) }
                completed.withLock { $0.append(context.id.rawValue) }
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4, shutdownGrace: .seconds(20)))
            let service = Task { await broker.run(pool) }
            try await waitUntil("20 jobs done") { completed.withLock { $0.count } >= 20 }
            let normal = broker.topology.brokerQueue(.normal)
            #expect(try queueCounts(normal).consumers == 1)
            service.cancel()
            await service.value
            let done = completed.withLock { $0 }
            #expect(started.withLock { $0 } == done.count, "every job that started finished")
            let stats = await broker.statistics()
            #expect(stats.failedAttempts == 0 && stats.timedOutAttempts == 0, "no running job was stopped")
            let counts = try queueCounts(normal)
            #expect(counts.consumers == 0)
            #expect(counts.messages == ids.count - done.count, "everything not finished is back in the queue, ready")

            // Another consumer takes exactly the rest.
            let next = AMQPBroker(.init(url: try TestBroker.url(), queue: name, prefetch: 50))
            let rest = Locked<[String]>([])
            var quick = HandlerRegistry()
            try quick.registerRaw(Self.jobName) { payload, context in
                rest.withLock { $0.append(context.id.rawValue) }
                return payload
            }
            let drain = WorkerPool(broker: next, registry: quick, configuration: WorkerPoolConfiguration(concurrency: 8))
            let second = Task { await next.run(drain) }
            try await waitUntil("the rest", within: 30) { rest.withLock { $0.count } >= ids.count - done.count }
            second.cancel()
            await second.value
            let all = done + rest.withLock { $0 }
            #expect(all.count == ids.count && Set(all) == ids, "each job ran exactly once")
            try TestBroker.deleteQueues([name])
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func jobOutcomesArePublishedAsEvents() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let listener = try RawConnection(url: try TestBroker.url())
            defer { listener.close() }
            let events = "\(name).events"
            _ = try listener.declareQueue(events)
            try listener.bindQueue(events, exchange: Topology.eventsExchange, routingKey: "\(name).#")
            var configuration = AMQPBroker.Configuration(url: try TestBroker.url(), queue: name, prefetch: 10)
            configuration.retryPolicy = RetryPolicy(baseDelay: .seconds(1), jitter: 0)
            configuration.publishesEvents = true
            let broker = AMQPBroker(configuration)
            try await broker.waitUntilReady(timeout: .seconds(20))
            var registry = HandlerRegistry()
            try registry.registerRaw("events.ok") { _, _ in Data(#"{"fine":true}"#.utf8) }
            try registry.registerRaw("events.failing") { _, _ in throw TimedOut(description: "always fails") }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2))
            let service = Task { await broker.run(pool) }
            let queue = JobQueue(broker: broker)
            let ok = try await queue.submit(Job(name: "events.ok"))
            let failing = try await queue.submit(Job(name: "events.failing", maxRetries: 1))
            _ = try await ok.result()
            _ = try? await failing.result()
            var received: [IncomingMessage] = []
            // Polled (the listener is a plain connection on this task), with a deadline.
            let deadline = ContinuousClock.now + .seconds(10)
            while received.count < 3, ContinuousClock.now < deadline {
                if let message = try listener.get(events, autoAck: true) { received.append(message) } else { try await Task.sleep(for: .milliseconds(10)) }
            }
            // The two jobs run side by side: only each job's own events have an order.
            let keys = received.map(\.routingKey)
            let completedKey = "\(name).completed.events.ok"
            let retryingKey = "\(name).retrying.events.failing"
            let deadKey = "\(name).dead_lettered.events.failing"
            #expect(keys.sorted() == [completedKey, deadKey, retryingKey].sorted())
            #expect((keys.firstIndex(of: retryingKey) ?? .max) < (keys.firstIndex(of: deadKey) ?? .min), "retrying before dead_lettered: \(keys)")
            func body(_ key: String) -> [String: Any]? {
                received.first { $0.routingKey == key }.flatMap { try? JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any] }
            }
            let completedBody = body(completedKey)
            let retryingBody = body(retryingKey)
            let deadBody = body(deadKey)
            #expect(completedBody?["id"] as? String == ok.id.rawValue && completedBody?["attempt"] as? Int == 1)
            #expect(retryingBody?["error"] as? String == "always fails" && retryingBody?["attempt"] as? Int == 1 && retryingBody?["retry_at"] != nil)
            #expect(deadBody?["reason"] as? String == "retries_exhausted" && deadBody?["attempt"] as? Int == 2)
            service.cancel()
            await service.value
            try listener.deleteQueue(events)
            try TestBroker.deleteQueues([name])
        }
    }
}
