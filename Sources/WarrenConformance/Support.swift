#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import Warren

/// What a broker under test gets: a queue name of its own and the queue's configuration.
public struct ConformanceContext: Sendable {
    /// Unique per test, so tests can share one real broker.
    public let queueName: String
    public let configuration: QueueConfiguration
}

/// Makes a fresh broker for one test.
public typealias BrokerFactory = @Sendable (ConformanceContext) async throws -> any Broker

/// A failed expectation inside a conformance case.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

func expect(_ condition: Bool, _ message: String, file: StaticString = #fileID, line: UInt = #line) throws {
    guard condition else { throw ConformanceFailure("\(file):\(line): \(message)") }
}

func expectEqual<T: Equatable>(_ actual: T, _ expected: T, _ what: String, file: StaticString = #fileID, line: UInt = #line) throws {
    guard actual == expected else {
        throw ConformanceFailure("\(file):\(line): \(what): expected \(expected), got \(actual)")
    }
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    let seconds: Double
    var description: String { "timed out after \(seconds) s waiting for \(what)" }
}

/// Runs `body`, failing if it takes longer than `seconds`. It does not wait for a body that
/// ignores cancellation: a stuck wait fails the test instead of hanging the run.
func within<T: Sendable>(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let decided = Locked(false)
    let work = Locked<Task<Void, Never>?>(nil)
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        func finish(_ result: Result<T, any Error>) {
            guard decided.withLock({ decided in defer { decided = true }; return !decided }) else { return }
            continuation.resume(with: result)
        }
        work.withLock { $0 = Task { finish(await Result(catching: body)) } }
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            work.withLock { $0 }?.cancel()
            finish(.failure(TimedOut(what: what, seconds: seconds)))
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// Collects events from the moment it is made; waits for the ones a test expects.
final class EventLog: Sendable {
    private let events: AsyncStream<JobEvent>
    private let collected = Collected()

    init(_ broker: any Broker) {
        events = broker.events()
        let events = self.events
        let collected = self.collected
        Task { for await event in events { await collected.add(event) } }
    }

    /// Waits until an event matches, and returns it.
    @discardableResult
    func wait(_ what: String, within seconds: Double = 10, where match: @escaping @Sendable (JobEvent) -> Bool) async throws -> JobEvent {
        let collected = self.collected
        do {
            return try await within(seconds, what) { await collected.first(where: match) }
        } catch {
            // Say what did happen: the last events seen, oldest first.
            let seen = await collected.all.suffix(20).map { "\($0.label) \($0.id)" }
            throw ConformanceFailure("\(error); the last events seen: \(seen.isEmpty ? "none" : seen.joined(separator: ", "))")
        }
    }

    func all() async -> [JobEvent] { await collected.all }
}

private actor Collected {
    var all: [JobEvent] = []
    var waiters: [(match: @Sendable (JobEvent) -> Bool, continuation: CheckedContinuation<JobEvent, Never>)] = []

    func add(_ event: JobEvent) {
        all.append(event)
        var remaining: [(match: @Sendable (JobEvent) -> Bool, continuation: CheckedContinuation<JobEvent, Never>)] = []
        for waiter in waiters {
            if waiter.match(event) { waiter.continuation.resume(returning: event) } else { remaining.append(waiter) }
        }
        waiters = remaining
    }

    func first(where match: @escaping @Sendable (JobEvent) -> Bool) async -> JobEvent {
        if let event = all.first(where: match) { return event }
        return await withCheckedContinuation { waiters.append((match, $0)) }
    }
}

/// Takes the next job the broker serves, within a time limit.
func take(_ broker: any Broker, _ filter: DeliveryFilter = .any, within seconds: Double = 10) async throws -> Delivery {
    let delivery = try await within(seconds, "a delivery") { await broker.next(filter) }
    guard let delivery else { throw ConformanceFailure("the broker returned no delivery") }
    return delivery
}

func outcome(_ broker: any Broker, _ id: JobID, within seconds: Double = 10) async throws -> JobOutcome {
    let outcome: JobOutcome?
    do {
        outcome = try await within(seconds, "the outcome of \(id)", { await broker.outcome(of: id) })
    } catch {
        // Say where the job got stuck.
        let job = await broker.snapshot(id)
        throw ConformanceFailure("\(error); the job is \(job.map { "\($0), needing \($0.requiredCapabilities.sorted())" } ?? "unknown to the broker")")
    }
    guard let outcome else {
        throw ConformanceFailure("no outcome for \(id): the broker does not know the job")
    }
    return outcome
}

func job(_ name: String = "conformance", id: String = UUID().uuidString, priority: JobPriority = .normal, maxRetries: Int = 0) -> Job {
    Job(id: JobID(id), name: name, priority: priority, maxRetries: maxRetries)
}

/// A value that several tasks update.
final class Counter: Sendable {
    private let value = Locked(0)
    func increment() -> Int { add(1) }
    func add(_ delta: Int) -> Int { value.withLock { $0 += delta; return $0 } }
    var current: Int { value.withLock { $0 } }
}
