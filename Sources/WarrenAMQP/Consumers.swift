public import Warren

/// The consumers of a Warren queue's five priority queues on the connection's current channel.
///
/// RabbitMQ cancels a consumer when its queue is deleted or the queue's node goes down (it tells
/// clients that announce `consumer_cancel_notify`). The channel lives on with the unacked
/// deliveries of running jobs, so only that consumer is started again, once its queue answers.
final class Consumers: Sendable {
    private struct State {
        /// The channel generation whose channel has the consumers, if any.
        var generation: UInt64?
        var cancelled: Set<JobPriority> = []
        /// Wakes whoever restarts cancelled consumers.
        var signal: AsyncStream<Void>.Continuation?
    }

    private let state = Locked(State())
    /// Followers of cancellations and restarts (the service logs them).
    private let followers = Followers<ConsumerChange>(buffer: 32)

    /// `warren.<generation>.<priority>`: the priority is read back from each delivery's tag.
    static func tag(_ generation: UInt64, _ priority: JobPriority) -> String { "warren.\(generation).\(priority.name)" }

    /// The priority of the queue a consumer reads: the last part of its tag.
    static func priority(ofTag tag: String) -> JobPriority {
        guard let dot = tag.utf8.lastIndex(of: UInt8(ascii: ".")) else { return .normal }
        return JobPriority(name: String(tag[tag.utf8.index(after: dot)...])) ?? .normal
    }

    var cancelledPriorities: [JobPriority] { state.withLock { $0.cancelled.sorted() } }

    /// Consumers for the five priority queues, highest first: a backlog waiting when consumption
    /// starts then arrives highest priority first. Once per channel: a new channel's setup and
    /// `startConsuming` can both get here, and RabbitMQ closes the whole connection when a
    /// channel reuses a consumer tag.
    func start(_ session: ConnectionSession, topology: Topology, prefetch: UInt16) throws(AMQPError) {
        guard state.withLock({ $0.generation }) != session.generation else { return }
        try session.raw.setPrefetch(prefetch)
        for priority in JobPriority.allCases {
            try session.raw.consume(topology.brokerQueue(priority), consumerTag: Self.tag(session.generation, priority))
        }
        state.withLock { state in
            state.generation = session.generation
            state.cancelled = []
        }
    }

    /// The broker cancelled the consumer with `tag` (called on the I/O thread).
    func cancelled(_ tag: String) {
        let priority = Self.priority(ofTag: tag)
        let signal = state.withLock { state -> AsyncStream<Void>.Continuation?? in
            guard let generation = state.generation, tag.hasPrefix("warren.\(generation).") else { return nil }
            state.cancelled.insert(priority)
            return .some(state.signal)
        }
        guard let signal else { return }
        signal?.yield()
        followers.tell(.cancelled(priority))
    }

    /// Cancellations and restarts from now on, for any number of followers.
    func changes() -> AsyncStream<ConsumerChange> { followers.follow() }

    /// Starts the cancelled consumers whose queues answer again; the others stay cancelled.
    func restart(_ session: ConnectionSession, topology: Topology) throws(AMQPError) {
        let (generation, cancelled) = state.withLock { ($0.generation, $0.cancelled) }
        // A newer channel's setup has started all five.
        guard generation == session.generation else { return }
        for priority in cancelled.sorted() where try session.raw.queueAvailable(topology.brokerQueue(priority)) {
            try session.raw.consume(topology.brokerQueue(priority), consumerTag: Self.tag(session.generation, priority))
            state.withLock { _ = $0.cancelled.remove(priority) }
            followers.tell(.restarted(priority))
        }
    }

    /// Cancels the consumers of the current channel (a graceful stop).
    func stop(_ session: ConnectionSession) throws(AMQPError) {
        let (generation, cancelled) = state.withLock { ($0.generation, $0.cancelled) }
        defer {
            state.withLock { state in
                state.generation = nil
                state.cancelled = []
            }
        }
        guard generation == session.generation else { return }
        for priority in JobPriority.allCases where !cancelled.contains(priority) {
            try session.raw.cancelConsumer(Self.tag(session.generation, priority))
        }
    }

    /// A signal for each cancellation from now on, for one follower; the previous follower's
    /// stream ends.
    func cancellations() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let previous = state.withLock { state in
            defer { state.signal = continuation }
            return state.signal
        }
        previous?.finish()
        return stream
    }

    /// Ends the follower's stream.
    func endCancellations() {
        state.withLock { $0.signal.take() }?.finish()
    }
}

/// A consumer of one of the five priority queues that RabbitMQ cancelled, or that consumes again.
public enum ConsumerChange: Sendable, Equatable {
    case cancelled(JobPriority)
    case restarted(JobPriority)
}
