/// A set of workers with its own size and abilities (for example "gpu" workers next to "cpu" ones).
public struct WorkerGroup: Sendable, Equatable {
    public var name: String
    /// Jobs it runs at once.
    public var concurrency: Int
    /// Extra slots only critical jobs may use, so a critical job starts at once even when long
    /// lower-priority jobs fill every ordinary slot.
    public var reservedForCritical: Int
    /// What this group offers; a job runs here only if its required capabilities are a subset.
    public var capabilities: Set<String>

    public init(name: String = "default", concurrency: Int, reservedForCritical: Int = 0, capabilities: Set<String> = []) {
        self.name = name
        self.concurrency = max(1, concurrency)
        self.reservedForCritical = max(0, reservedForCritical)
        self.capabilities = capabilities
    }
}

/// How the pool chooses among worker groups that can take a job.
public enum RoutingStrategy: String, Sendable, CaseIterable {
    /// Each capable group with room in turn.
    case roundRobin = "round-robin"
    /// The capable group with the smallest share of busy slots.
    case leastLoaded = "least-loaded"
    /// Jobs with the same `affinity` key go to the same group while it has room (stable hash),
    /// otherwise to the least loaded; jobs without a key are routed least-loaded.
    case affinity
}

/// How busy one group is now.
public struct GroupLoad: Sendable, Equatable {
    public var group: WorkerGroup
    public var busy: Int
    public var reservedBusy: Int

    public init(group: WorkerGroup, busy: Int = 0, reservedBusy: Int = 0) {
        self.group = group
        self.busy = busy
        self.reservedBusy = reservedBusy
    }

    /// Where in this group the job would run now, if anywhere.
    public func slot(for job: Job) -> Slot? {
        guard job.requiredCapabilities.isSubset(of: group.capabilities) else { return nil }
        if busy < group.concurrency { return .ordinary }
        if job.priority == .critical, reservedBusy < group.reservedForCritical { return .reserved }
        return nil
    }

    var load: Double {
        Double(busy + reservedBusy) / Double(group.concurrency + group.reservedForCritical)
    }
}

public enum Slot: Sendable, Equatable { case ordinary, reserved }

/// Picks the worker group for a job. Pure and deterministic, so every strategy is testable alone.
package struct Router: Sendable {
    public let strategy: RoutingStrategy
    private var cursor = 0

    public init(strategy: RoutingStrategy) { self.strategy = strategy }

    /// The index of the chosen group and the slot there, or nil when no capable group has room.
    public mutating func route(_ job: Job, among groups: [GroupLoad]) -> (group: Int, slot: Slot)? {
        guard !groups.isEmpty else { return nil }
        switch strategy {
        case .roundRobin:
            for step in 0..<groups.count {
                let index = (cursor + step) % groups.count
                if let slot = groups[index].slot(for: job) {
                    cursor = index + 1
                    return (index, slot)
                }
            }
            return nil
        case .leastLoaded:
            return leastLoaded(job, groups)
        case .affinity:
            guard let key = job.affinity else { return leastLoaded(job, groups) }
            let capable = groups.indices.filter { job.requiredCapabilities.isSubset(of: groups[$0].group.capabilities) }
            guard !capable.isEmpty else { return nil }
            let preferred = capable[Int(stableHash(key) % UInt64(capable.count))]
            if let slot = groups[preferred].slot(for: job) { return (preferred, slot) }
            return leastLoaded(job, groups)
        }
    }

    private mutating func leastLoaded(_ job: Job, _ groups: [GroupLoad]) -> (group: Int, slot: Slot)? {
        var best: (group: Int, slot: Slot, load: Double)?
        // Start at the cursor so ties rotate instead of always landing on the first group.
        for step in 0..<groups.count {
            let index = (cursor + step) % groups.count
            guard let slot = groups[index].slot(for: job) else { continue }
            let load = groups[index].load
            if best == nil || load < best!.load { best = (index, slot, load) }
        }
        guard let best else { return nil }
        cursor = best.group + 1
        return (best.group, best.slot)
    }
}

/// FNV-1a: the same key maps to the same group in every process (Swift's `Hasher` is seeded per run).
func stableHash(_ key: String) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in key.utf8 {
        hash ^= UInt64(byte)
        hash &*= 0x0000_0100_0000_01B3
    }
    return hash
}
