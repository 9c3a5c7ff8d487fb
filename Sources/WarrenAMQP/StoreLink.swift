import CoreMetrics
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@_spi(Transport) import Warren

/// The AMQP broker's use of a job-state store (`JobStateStore`): claims arriving jobs, keeps the
/// lease alive, records how jobs move, and says whether the store answers. When a call fails the
/// broker goes on as if there were no store (what one process knows: at-least-once, dedup per
/// process), counts a fall-back, and uses the store again as soon as a call succeeds.
final class StoreLink: Sendable {
    /// Changes waiting to be written, and what to do once each batch is recorded.
    private struct Writes {
        var changes: [(id: JobID, change: JobChange)] = []
        var then: [@Sendable () -> Void] = []
        var flushing = false
    }

    let store: any JobStateStore
    private let state = Locked(StateStoreHealth())
    private let writes = Locked(Writes())
    private let fallbackCounter: Counter
    private let renewal = Locked<Task<Void, Never>?>(nil)
    /// Callers waiting for jobs to end anywhere, by job and token; one subscription serves them all.
    private let endingWaiters = Locked<(watching: Bool, next: UInt64, waiters: [JobID: [UInt64: @Sendable () -> Void]])>((false, 0, [:]))

    init(store: any JobStateStore, queue: String) {
        self.store = store
        fallbackCounter = Counter(label: "warren_state_store_fallbacks_total", dimensions: [("queue", queue)])
    }

    var health: StateStoreHealth { state.withLock { $0 } }

    /// Renews the lease every `every` until `stop` (the claims renew it too, while jobs arrive).
    func keepLease(every interval: Duration) {
        let store = self.store
        let task = Task { [weak self] in
            while !Task.isCancelled {
                do {
                    try await store.renewLease()
                    self?.succeeded()
                } catch {
                    self?.failed(error)
                }
                try? await Task.sleep(for: interval)
            }
        }
        renewal.withLock { $0 = task }
    }

    /// Claims `jobs` for this instance; nil when the store did not answer (run them all: what one
    /// process knows decides).
    func claim(_ jobs: [Job]) async -> [StoreClaim]? {
        let requests = jobs.map { job in
            StoreClaimRequest(id: job.id, name: job.name, priority: job.priority, attempt: job.attempt, replayed: job.metadata[WireFormat.replayedKey] != nil)
        }
        return await call { [store] in
            let answers = try await store.claim(requests)
            guard answers.count == jobs.count else { throw StoreLinkError("the store answered \(answers.count) claims for \(jobs.count) jobs") }
            return answers
        }
    }

    /// The statuses of `ids` (nil: no record); nil when the store did not answer.
    func statuses(_ ids: [JobID]) async -> [JobStatus?]? {
        await call { [store] in
            let answers = try await store.statuses(ids)
            guard answers.count == ids.count else { throw StoreLinkError("the store answered \(answers.count) statuses for \(ids.count) jobs") }
            return answers
        }
    }

    /// Whether a cancel was asked for each of `ids`; nil when the store did not answer.
    func cancelRequested(_ ids: [JobID]) async -> [Bool]? {
        await call { [store] in
            let answers = try await store.cancelRequested(ids)
            guard answers.count == ids.count else { throw StoreLinkError("the store answered \(answers.count) cancel marks for \(ids.count) jobs") }
            return answers
        }
    }

    /// Records changes and returns once the store has them (or did not answer).
    func record(_ changes: [(id: JobID, change: JobChange)]) async {
        guard !changes.isEmpty else { return }
        _ = await call { [store] in try await store.record(changes) }
    }

    /// Follows the endings of jobs anywhere (one subscription, started once), for `waitForEnding`.
    func watchEndings() {
        let waiters = endingWaiters
        let startWatching = waiters.withLock { state in
            defer { state.watching = true }
            return !state.watching
        }
        guard startWatching else { return }
        store.watchEndings { ended, _ in
            let woken = waiters.withLock { $0.waiters.removeValue(forKey: ended) } ?? [:]
            for wake in woken.values { wake() }
        }
    }

    /// Waits for the job to end anywhere: returns once `ended` (asked after the wait is set up, so
    /// an ending between the two is not missed) says so, when the store's pub/sub says it ended,
    /// after `atMost`, or when the calling task is cancelled, whichever is first. Any number of
    /// callers share one subscription.
    func waitForEnding(of id: JobID, atMost: Duration, unless ended: @Sendable () async -> Bool) async {
        watchEndings()
        let waiters = endingWaiters
        // Whichever comes first resumes the wait, once; one that comes before it began ends it at once.
        let wait = Locked<(continuation: CheckedContinuation<Void, Never>?, over: Bool)>((nil, false))
        let wake: @Sendable () -> Void = {
            let continuation = wait.withLock { wait in
                defer { wait = (nil, true) }
                return wait.continuation
            }
            continuation?.resume()
        }
        let token = waiters.withLock { state in
            defer { state.next &+= 1 }
            state.waiters[id, default: [:]][state.next] = wake
            return state.next
        }
        let timer = Task {
            try? await Task.sleep(for: atMost)
            wake()
        }
        if await ended() { wake() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let over = wait.withLock { wait in
                    if !wait.over { wait.continuation = continuation }
                    return wait.over
                }
                if over { continuation.resume() }
            }
        } onCancel: {
            wake()
        }
        timer.cancel()
        waiters.withLock { state in
            state.waiters[id]?[token] = nil
            if state.waiters[id]?.isEmpty == true { state.waiters[id] = nil }
        }
    }

    /// Runs a call to the store: its answer, or nil when it failed (counted as a fall-back).
    private func call<T: Sendable>(_ body: @Sendable () async throws -> T) async -> T? {
        do {
            let answer = try await body()
            succeeded()
            return answer
        } catch {
            failed(error)
            return nil
        }
    }

    /// Records a change soon, together with others (starts, progress): nothing waits for it.
    func note(_ id: JobID, _ change: JobChange) { write([(id, change)], then: nil) }

    /// Records `changes` together with whatever else is waiting (one pipeline a batch, one
    /// writer), then calls `then`, whether the store took them or did not answer: endings are
    /// recorded before their messages are acked, so a copy that arrives later is known as a duplicate.
    func write(_ changes: [(id: JobID, change: JobChange)], then: (@Sendable () -> Void)?) {
        let start = writes.withLock { writes in
            writes.changes.append(contentsOf: changes)
            if let then { writes.then.append(then) }
            defer { writes.flushing = true }
            return !writes.flushing
        }
        guard start else { return }
        Task { await flush() }
    }

    private func flush() async {
        while true {
            let (changes, then) = writes.withLock { writes in
                defer {
                    writes.changes.removeAll(keepingCapacity: true)
                    writes.then.removeAll(keepingCapacity: true)
                }
                if writes.changes.isEmpty && writes.then.isEmpty { writes.flushing = false }
                return (writes.changes, writes.then)
            }
            guard !changes.isEmpty || !then.isEmpty else { return }
            await record(changes)
            for action in then { action() }
        }
    }

    /// Gives claimed jobs up (handed back unstarted), so another instance need not wait for this
    /// one's lease to run out.
    func release(_ ids: [JobID]) async {
        guard !ids.isEmpty else { return }
        _ = await call { [store] in try await store.release(ids) }
    }

    /// Stops renewing, records what is noted, gives the lease up (a clean stop: what this
    /// instance held may run elsewhere at once) and closes the store's watches.
    func stop() async {
        renewal.withLock { task in
            task?.cancel()
            task = nil
        }
        await flush()
        do { try await store.releaseLease() } catch { failed(error) }
        await store.close()
    }

    private func succeeded() {
        state.withLock { health in
            health.available = true
            health.lastError = nil
        }
    }

    private func failed(_ error: any Error) {
        state.withLock { health in
            health.available = false
            health.fallbacks += 1
            health.lastError = "\(error)"
        }
        fallbackCounter.increment()
    }
}

struct StoreLinkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Whether a broker's job-state store answers, as its last call found.
public struct StateStoreHealth: Sendable, Equatable {
    public var available = true
    /// Calls that failed, the broker going on without the store each time (`warren_state_store_fallbacks_total`).
    public var fallbacks = 0
    public var lastError: String?
}
