#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization

/// Where jobs live, in the three roles its callers use: producers submit (`JobSubmitter`), worker
/// pools take work and settle it (`WorkSource`), and anyone observes (`JobObserving`). The
/// in-memory broker and the AMQP broker implement all three over the local engine (`LocalQueue`,
/// offered to transports as `@_spi(Transport)`); `WarrenConformance` checks any implementation
/// against the queue contract.
///
/// Messages a broker cannot read as jobs (malformed envelopes, oversized bodies) never reach `next`:
/// the broker dead-letters them itself with the reason and reports a `deadLettered` event, so one bad
/// message never ends or stalls consumption.
public protocol Broker: JobSubmitter, WorkSource, JobObserving {
    /// Stops serving: waiting consumers get nil, event streams finish.
    func close() async
}

/// Submitting jobs, and cancelling them: what a producer (`JobQueue`) uses.
public protocol JobSubmitter: Sendable {
    /// Enqueues jobs atomically: all of them, or none with the reason.
    func enqueue(_ jobs: [Job]) async throws(EnqueueRefusal)
    /// Cancels a job: one that has not started never runs; a running one's `stop` signal fires.
    func cancel(_ id: JobID) async -> CancelResult
}

/// Taking work and settling it: what a worker pool uses.
public protocol WorkSource: Sendable {
    /// The best ready job a room of `filter` admits, marked running; waits until there is one.
    /// Returns nil when the broker closes or the calling task is cancelled while waiting.
    func next(_ filter: DeliveryFilter) async -> Delivery?
    /// Like `next`, but returns nil at once when no admitted job is ready.
    func tryNext(_ filter: DeliveryFilter) async -> Delivery?
    /// Ends the attempt of a delivery: completes, retries with backoff, or dead-letters it.
    func settle(_ delivery: Delivery, _ outcome: AttemptOutcome) async
    /// `settle`, then `tryNext(filter)`, in one step where the broker can: how a worker that just
    /// finished a job takes the next one.
    func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter) async -> Delivery?
    func reportProgress(_ id: JobID, _ percent: Double) async
    /// Offers ready jobs to waiting consumers again: what a waiting consumer's filter admits grew
    /// without a change to the queue (a name back under its limit, see `NameLimits`).
    func reoffer() async
    /// The first half of a graceful shutdown, after the worker pool stopped taking jobs: stop
    /// receiving work and give back what has not started (a transport returns it to its source,
    /// for other workers); running jobs still settle. Does nothing by default.
    func stopTakingWork() async
}

/// Following jobs: events, the state of one job, its outcome, the queue's counts.
public protocol JobObserving: Sendable {
    /// Lifecycle events from now on. Consume them: the stream buffers without bound.
    func events() -> AsyncStream<JobEvent>
    /// The job as this broker knows it now.
    func snapshot(_ id: JobID) async -> Job?
    /// Waits until the job ends; nil when the job is unknown or the broker closes first.
    func outcome(of id: JobID) async -> JobOutcome?
    func statistics() async -> QueueStatistics
}

extension WorkSource {
    public func stopTakingWork() async {}

    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter) async -> Delivery? {
        await settle(delivery, outcome)
        return await tryNext(filter)
    }
}

/// A job handed to a worker, with the signal that tells the worker to stop it.
public struct Delivery: Sendable {
    public let job: Job
    public let stop: StopSignal

    public init(job: Job, stop: StopSignal = StopSignal()) {
        self.job = job
        self.stop = stop
    }
}

/// Tells a running job's worker to stop it (cancelled or timed out), and makes sure the attempt is
/// settled exactly once, by whichever comes first: the handler's end or the stop.
public final class StopSignal: Sendable {
    public enum Reason: Sendable, Equatable {
        case cancelled
        case timedOut
        /// The worker pool is shutting down past its grace period.
        case shutdown
    }

    private struct State {
        var reason: Reason?
        var settled = false
        var action: (@Sendable (Reason) -> Void)?
        /// The settlement a stop started (see `settleOnStop`).
        var stopSettlement: Task<Void, Never>?
    }
    private let state = Mutex(State())

    public init() {}

    /// Why the job was stopped, if it was.
    public var reason: Reason? { state.withLock { $0.reason } }

    /// Asks the worker to stop the job. The first reason wins; later calls do nothing.
    public func fire(_ reason: Reason) {
        let action = state.withLock { state -> (@Sendable (Reason) -> Void)? in
            guard state.reason == nil, !state.settled else { return nil }
            state.reason = reason
            defer { state.action = nil }
            return state.action
        }
        action?(reason)
    }

    /// Runs `action` when the signal fires (at once if it already has).
    public func onFire(_ action: @escaping @Sendable (Reason) -> Void) {
        let firedReason = state.withLock { state -> Reason? in
            if let reason = state.reason { return reason }
            state.action = action
            return nil
        }
        if let firedReason { action(firedReason) }
    }

    /// Whether the attempt has been settled.
    public var isSettled: Bool { state.withLock { $0.settled } }

    /// Claims the right to settle the attempt: true exactly once.
    public func claimSettlement() -> Bool {
        if case .claimed = claimOrStopSettlement() { true } else { false }
    }

    /// For a worker pool reacting to a stop: claims the settlement and starts it with `settle`,
    /// unless the attempt was settled already. The task is kept for `claimOrStopSettlement`.
    package func settleOnStop(_ settle: () -> Task<Void, Never>) {
        state.withLock { state in
            guard !state.settled else { return }
            state.settled = true
            state.action = nil
            state.stopSettlement = settle()
        }
    }

    /// The settlement a stop started, if one did.
    package var stopSettlement: Task<Void, Never>? { state.withLock { $0.stopSettlement } }

    /// Who settles an attempt whose handler returned.
    package enum Settler {
        /// The caller: nothing settled it yet.
        case claimed
        /// A stop did, with this settlement (nil: settled elsewhere); wait for it.
        case stopped(Task<Void, Never>?)
    }

    /// For a worker pool whose handler returned: whether it settles the attempt now, or a stop did.
    package func claimOrStopSettlement() -> Settler {
        state.withLock { state in
            guard state.settled else {
                state.settled = true
                state.action = nil
                return .claimed
            }
            return .stopped(state.stopSettlement)
        }
    }
}
