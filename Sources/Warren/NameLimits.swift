/// Most jobs of one name running at once in a worker pool (`WorkerPoolConfiguration.limits`), under
/// the pool's own limit: a job whose name is at its limit is passed over (lower-priority jobs of
/// other names may start meanwhile), never run beside the others.
///
/// The broker takes a place when it hands a job to a consumer whose filter carries these limits
/// (under the broker's lock, with the choice of the job); the pool gives it back when the
/// handler's run ends, which may be after the attempt was settled (a stopped handler that is
/// still finishing keeps its place, as it keeps its slot).
public final class NameLimits: Sendable {
    public let limits: [String: Int]
    private let running: Locked<[String: Int]>

    /// - Parameter limits: the most jobs of each name at once; names not listed are not limited.
    public init(_ limits: [String: Int]) {
        self.limits = limits.mapValues { max(1, $0) }
        running = Locked([:])
    }

    /// Whether one more job of this name may start.
    public func hasRoom(for name: String) -> Bool {
        guard let limit = limits[name] else { return true }
        return running.withLock { $0[name, default: 0] } < limit
    }

    /// Notes a job of this name starting.
    public func take(_ name: String) {
        guard limits[name] != nil else { return }
        running.withLock { $0[name, default: 0] += 1 }
    }

    /// Notes a job of this name ending. Returns true when the name was at its limit, so jobs passed
    /// over for it may start now.
    @discardableResult
    public func give(_ name: String) -> Bool {
        guard let limit = limits[name] else { return false }
        return running.withLock { running in
            let count = running[name, default: 0]
            guard count > 0 else { return false }
            running[name] = count - 1
            return count == limit
        }
    }
}
