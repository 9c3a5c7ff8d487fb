import Warren

/// Any number of followers of a stream of changes: each `follow()` is a new stream that gets every
/// change from then on (the newest `buffer` when it lags), until it is dropped or `finish()`.
final class Followers<Change: Sendable>: Sendable {
    private let streams = Locked<(next: UInt64, all: [UInt64: AsyncStream<Change>.Continuation])>((0, [:]))
    private let buffer: Int

    init(buffer: Int) { self.buffer = buffer }

    func follow() -> AsyncStream<Change> {
        let (stream, continuation) = AsyncStream.makeStream(of: Change.self, bufferingPolicy: .bufferingNewest(buffer))
        let key = streams.withLock { streams in
            streams.next += 1
            streams.all[streams.next] = continuation
            return streams.next
        }
        continuation.onTermination = { [streams] _ in streams.withLock { _ = $0.all.removeValue(forKey: key) } }
        return stream
    }

    func tell(_ change: Change) {
        for follower in streams.withLock({ Array($0.all.values) }) { follower.yield(change) }
    }

    /// Ends every stream.
    func finish() {
        for follower in streams.withLock({ Array($0.all.values) }) { follower.finish() }
    }
}
