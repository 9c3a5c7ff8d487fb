#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import Warren

/// One behaviour of the queue contract, runnable against any broker.
public struct ConformanceCase: Sendable, CustomStringConvertible {
    public let name: String
    let configuration: QueueConfiguration
    let body: @Sendable (any Broker) async throws -> Void

    public var description: String { name }

    /// Runs the case on a fresh broker from `factory`, and closes it afterwards.
    /// - Parameter delayResolution: how much later than asked the broker may start a delayed job by
    ///   design (the AMQP broker's delay cascade rounds up to whole seconds).
    public func run(delayResolution: Duration = .zero, _ factory: BrokerFactory) async throws {
        let queueName = "conf-" + String(name.map { $0 == " " ? "-" : $0 }) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let broker = try await factory(ConformanceContext(queueName: queueName, configuration: configuration))
        do {
            try await ConformanceSuite.$delayResolution.withValue(delayResolution) { try await body(broker) }
        } catch {
            await broker.close()
            throw error
        }
        await broker.close()
    }
}

/// The queue contract as behaviour tests, written once for every broker.
public enum ConformanceSuite {
    /// The broker's `delayResolution` for the case running now.
    @TaskLocal static var delayResolution: Duration = .zero

    /// Short backoff so retry cases finish quickly against real brokers too.
    static let quickRetry = RetryPolicy(baseDelay: .milliseconds(50), multiplier: 2, maxDelay: .seconds(1), jitter: 0)

    static func test(
        _ name: String, _ configuration: QueueConfiguration = QueueConfiguration(retryPolicy: quickRetry),
        _ body: @escaping @Sendable (any Broker) async throws -> Void
    ) -> ConformanceCase {
        ConformanceCase(name: name, configuration: configuration, body: body)
    }

    public static let cases: [ConformanceCase] = queueCases + workerCases

    // MARK: The queue

    static let queueCases: [ConformanceCase] = [
        test("dedup refuses a known id") { broker in
            let first = job()
            try await broker.enqueue([first])
            do {
                try await broker.enqueue([job(id: first.id.rawValue)])
                throw ConformanceFailure("a second job with the same id was accepted")
            } catch let refusal as EnqueueRefusal {
                try expectEqual(refusal, .duplicate(first.id), "refusal")
            }
            let delivery = try await take(broker)
            await broker.settle(delivery, .completed(Data("1".utf8)))
            _ = try await outcome(broker, first.id)
            do {
                try await broker.enqueue([job(id: first.id.rawValue)])
                throw ConformanceFailure("a finished job's id was accepted again inside the dedup window")
            } catch let refusal as EnqueueRefusal {
                try expectEqual(refusal, .duplicate(first.id), "refusal after completion")
            }
        },
        test("serves highest priority first, equal priorities in arrival order") { broker in
            let order: [JobPriority] = [.low, .normal, .background, .critical, .normal, .high, .critical, .low]
            let jobs = order.enumerated().map { job(id: "p\($0.offset)-\(UUID().uuidString)", priority: $0.element) }
            for job in jobs { try await broker.enqueue([job]) }
            var served: [JobID] = []
            for _ in jobs {
                let delivery = try await take(broker)
                served.append(delivery.job.id)
                await broker.settle(delivery, .completed(Data()))
            }
            let expected = jobs.enumerated().sorted { ($0.element.priority, $0.offset) < ($1.element.priority, $1.offset) }.map(\.element.id)
            try expectEqual(served, expected, "service order")
        },
        test("tracks in-flight jobs; ack completes with the result") { broker in
            let one = job()
            try await broker.enqueue([one])
            let delivery = try await take(broker)
            try expectEqual(delivery.job.id, one.id, "delivered job")
            try expectEqual(await broker.snapshot(one.id)?.status, .running, "status while running")
            try expectEqual(await broker.statistics().inFlight, 1, "in flight")
            await broker.settle(delivery, .completed(Data(#"{"ok":true}"#.utf8)))
            try expectEqual(try await outcome(broker, one.id), .completed(Data(#"{"ok":true}"#.utf8)), "outcome")
            try expectEqual(await broker.statistics().inFlight, 0, "in flight after ack")
            try expectEqual(await broker.snapshot(one.id)?.status, .completed, "status after ack")
        },
        test("settling while taking the next job: the outcome is kept and the best job the filter admits comes next") { broker in
            let first = job(priority: .high), low = job(priority: .low)
            var gpu = job(priority: .critical)
            gpu.requiredCapabilities = ["gpu"]
            try await broker.enqueue([first])
            let delivery = try await take(broker)
            try await broker.enqueue([low, gpu])
            try await within(10, "both jobs to be ready") { while await broker.statistics().depth < 2 { await Task.yield() } }
            let plain = DeliveryFilter(rooms: [.init(lowest: .background, capabilities: [])])
            let second = await broker.settle(delivery, .completed(Data("1".utf8)), thenTryNext: plain)
            try expectEqual(second?.job.id, low.id, "the job a room without a GPU admits")
            try expectEqual(try await outcome(broker, first.id), .completed(Data("1".utf8)), "the settled job's outcome")
            guard let second else { return }
            let gpuRoom = DeliveryFilter(rooms: [.init(lowest: .critical, capabilities: ["gpu"])])
            let third = await broker.settle(second, .completed(Data("2".utf8)), thenTryNext: gpuRoom)
            try expectEqual(third?.job.id, gpu.id, "the critical GPU job")
            guard let third else { return }
            let none = await broker.settle(third, .completed(Data("3".utf8)), thenTryNext: .any)
            try expect(none == nil, "nothing is left to take")
            try expectEqual(try await outcome(broker, gpu.id), .completed(Data("3".utf8)), "the last outcome")
            try expectEqual(await broker.statistics().inFlight, 0, "in flight at the end")
        },
        test("nack retries with backoff, then dead-letters with every error") { broker in
            var flaky = job(maxRetries: 2)
            flaky.metadata["case"] = "retry"
            try await broker.enqueue([flaky])
            var lastFailure = Date()
            for attempt in 1...3 {
                let delivery = try await take(broker)
                try expectEqual(delivery.job.attempt, attempt, "attempt number")
                if attempt > 1 {
                    // Backoff before attempt n is 50 ms × 2^(n−2); allow scheduling slack of 10 ms.
                    let backoff = 0.05 * Double(1 << (attempt - 2))
                    let waited = Date().timeIntervalSince(lastFailure)
                    try expect(waited >= backoff - 0.01, "attempt \(attempt) came after \(waited) s, before its \(backoff) s backoff")
                }
                lastFailure = Date()
                await broker.settle(delivery, .failed("boom \(attempt)"))
            }
            let result = try await outcome(broker, flaky.id)
            guard case let .deadLettered(reason, errors) = result else { throw ConformanceFailure("expected a dead letter, got \(result)") }
            try expectEqual(reason, .retriesExhausted(attempts: 3, lastError: "boom 3"), "reason")
            try expectEqual(errors.map(\.message), ["boom 1", "boom 2", "boom 3"], "attempt errors")
            try expectEqual(errors.map(\.attempt), [1, 2, 3], "attempt numbers")
        },
        test("a job past its deadline is dead-lettered, never run") { broker in
            var late = job()
            late.notBefore = Date().addingTimeInterval(0.4)
            late.deadline = Date().addingTimeInterval(0.1)
            let onTime = job()
            try await broker.enqueue([late, onTime])
            let delivery = try await take(broker)
            try expectEqual(delivery.job.id, onTime.id, "the on-time job is served")
            await broker.settle(delivery, .completed(Data()))
            let result = try await outcome(broker, late.id, within: 5)
            guard case .deadLettered(.deadline, _) = result else { throw ConformanceFailure("expected deadline dead letter, got \(result)") }
            try expect(await broker.tryNext(.any) == nil, "the late job is never served")
        },
        test("a delayed job becomes ready at its time") { broker in
            var delayed = job()
            let due = Date().addingTimeInterval(0.5)
            delayed.notBefore = due
            // A plain sleep to the same time, as the yardstick of how late this machine wakes
            // anything now: a busy 2-core machine once woke every timer a second late. The
            // broker's wake-up is a chain of them (its timer, then the waiting consumer), so a
            // loaded machine delays it a few times what it delays one sleep: CI once saw the
            // sleep 0.58 s late and the delivery 1.24 s late.
            let yardstick = Task { () -> TimeInterval in
                try? await Task.sleep(for: .seconds(max(0, due.timeIntervalSinceNow)))
                return -due.timeIntervalSinceNow
            }
            try await broker.enqueue([delayed])
            try expect(await broker.tryNext(.any) == nil, "a delayed job is not ready before its time")
            try expectEqual(await broker.snapshot(delayed.id)?.status, .pending, "status while delayed")
            let delivery = try await take(broker, within: 5)
            let early = due.timeIntervalSinceNow
            let sleeperLate = await yardstick.value
            try expect(early <= 0.005, "delivered \(early) s before its time")
            let resolution = delayResolution.timeInterval
            try expect(
                -early < resolution + 0.5 + max(0.5, 3 * sleeperLate),
                "delivered \(-early) s after its time (a plain sleep woke \(sleeperLate) s late; the broker rounds delays up by up to \(resolution) s)")
            await broker.settle(delivery, .completed(Data()))
        },
        test("cancelling a queued job means it never runs") { broker in
            let doomed = job()
            let other = job()
            try await broker.enqueue([doomed, other])
            try expectEqual(await broker.cancel(doomed.id), .cancelled, "cancel result")
            let delivery = try await take(broker)
            try expectEqual(delivery.job.id, other.id, "the cancelled job is skipped")
            await broker.settle(delivery, .completed(Data()))
            try expectEqual(try await outcome(broker, doomed.id), .cancelled, "outcome")
            try expectEqual(await broker.cancel(doomed.id), .alreadyFinished(.cancelled), "second cancel")
            try expectEqual(await broker.cancel(JobID("never-submitted-\(UUID())")), .unknown, "unknown cancel")
        },
        test("cancelling a running job fires its stop signal and ends it cancelled") { broker in
            let running = job(maxRetries: 3)
            try await broker.enqueue([running])
            let delivery = try await take(broker)
            try expectEqual(await broker.cancel(running.id), .cancelling, "cancel result")
            try expectEqual(delivery.stop.reason, .cancelled, "stop signal")
            await broker.settle(delivery, .cancelled)
            try expectEqual(try await outcome(broker, running.id), .cancelled, "outcome")
        },
        test("a job waits for its dependencies to complete") { broker in
            let parent = job(id: "parent-\(UUID())")
            var child = job(id: "child-\(UUID())", priority: .critical)
            child.dependencies = [parent.id]
            try await broker.enqueue([parent, child])
            try expectEqual(await broker.snapshot(child.id)?.status, .pending, "child status")
            let first = try await take(broker)
            try expectEqual(first.job.id, parent.id, "the parent runs first despite lower priority")
            try expect(await broker.tryNext(.any) == nil, "the child is not ready while its parent runs")
            await broker.settle(first, .completed(Data()))
            let second = try await take(broker)
            try expectEqual(second.job.id, child.id, "the child runs after")
            await broker.settle(second, .completed(Data()))
        },
        test("unknown dependencies and cycles are refused at submit") { broker in
            var orphan = job()
            let missing = JobID("missing-\(UUID())")
            orphan.dependencies = [missing]
            do {
                try await broker.enqueue([orphan])
                throw ConformanceFailure("a job with an unknown dependency was accepted")
            } catch let refusal as EnqueueRefusal {
                try expectEqual(refusal, .unknownDependency(job: orphan.id, dependency: missing), "refusal")
            }
            var a = job(id: "a-\(UUID())"), b = job(id: "b-\(UUID())"), c = job(id: "c-\(UUID())")
            a.dependencies = [c.id]
            b.dependencies = [a.id]
            c.dependencies = [b.id]
            do {
                try await broker.enqueue([a, b, c])
                throw ConformanceFailure("a dependency cycle was accepted")
            } catch let refusal as EnqueueRefusal {
                guard case let .dependencyCycle(cycle) = refusal else { throw ConformanceFailure("expected a cycle, got \(refusal)") }
                try expectEqual(Set(cycle), Set([a.id, b.id, c.id]), "the cycle names its jobs")
            }
            try expect(await broker.snapshot(a.id) == nil, "nothing of a refused batch is enqueued")
        },
        test("dependents of a failed or cancelled job end naming it") { broker in
            let parent = job(id: "parent-\(UUID())")
            var child = job(id: "child-\(UUID())")
            child.dependencies = [parent.id]
            var grandchild = job(id: "grandchild-\(UUID())")
            grandchild.dependencies = [child.id]
            let cancelledParent = job(id: "cancelled-\(UUID())")
            var orphan = job(id: "orphan-\(UUID())")
            orphan.dependencies = [cancelledParent.id]
            try await broker.enqueue([parent, child, grandchild, cancelledParent, orphan])
            _ = await broker.cancel(cancelledParent.id)
            let delivery = try await take(broker)
            try expectEqual(delivery.job.id, parent.id, "only the parent is ready")
            await broker.settle(delivery, .failed("parent broke"))
            try expectEqual(try await outcome(broker, child.id),
                            .deadLettered(.dependencyFailed(parent.id, status: .deadLettered), errors: []), "child outcome")
            try expectEqual(try await outcome(broker, grandchild.id),
                            .deadLettered(.dependencyFailed(child.id, status: .deadLettered), errors: []), "grandchild outcome")
            try expectEqual(try await outcome(broker, orphan.id),
                            .deadLettered(.dependencyFailed(cancelledParent.id, status: .cancelled), errors: []), "orphan outcome")
        },
        test("a full queue refuses new jobs", QueueConfiguration(capacity: 3)) { broker in
            try await broker.enqueue([job(), job(), job()])
            do {
                try await broker.enqueue([job()])
                throw ConformanceFailure("a fourth job was accepted by a queue of capacity 3")
            } catch let refusal as EnqueueRefusal {
                try expectEqual(refusal, .queueFull(capacity: 3), "refusal")
            }
            let delivery = try await take(broker)
            await broker.settle(delivery, .completed(Data()))
            try await broker.enqueue([job()])
        },
        test("events follow a job's life; statistics count it") { broker in
            let log = EventLog(broker)
            let one = job(maxRetries: 1)
            try await broker.enqueue([one])
            let delivery = try await take(broker)
            await broker.reportProgress(one.id, 40)
            await broker.settle(delivery, .failed("first try"))
            let retried = try await take(broker)
            await broker.settle(retried, .completed(Data()))
            try await log.wait("completed") { $0.id == one.id && $0.kind == .completed }
            let labels = await log.all().filter { $0.id == one.id }.map(\.label)
            try expectEqual(labels, ["enqueued", "started", "progress", "failed", "retrying", "started", "completed"], "events")
            let stats = await broker.statistics()
            try expect(stats.completed >= 1 && stats.retried >= 1 && stats.failedAttempts >= 1, "statistics: \(stats)")
            try expectEqual(stats.inFlight, 0, "in flight")
        },
    ]
}
