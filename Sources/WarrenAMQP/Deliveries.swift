import Warren

/// One delivery: a class, so the hot path moves one reference instead of a dozen fields.
final class Origin: Sendable {
    let tag: UInt64
    let generation: UInt64
    let exchange: String
    let routingKey: String
    let properties: MessageProperties

    init(_ message: IncomingMessage, generation: UInt64) {
        tag = message.deliveryTag
        self.generation = generation
        exchange = message.exchange
        routingKey = message.routingKey
        properties = message.properties
    }
}

/// A job's delivery, and copies of it that arrived while it was held here (redeliveries after a
/// reconnection); they are all settled together.
struct Origins: Sendable {
    let first: Origin
    var duplicates: [Origin] = []

    /// Notes another arrival; the one that created the entry is not a duplicate of itself.
    mutating func add(_ origin: Origin) {
        if origin !== first { duplicates.append(origin) }
    }

    func forEach(_ body: (Origin) -> Void) {
        body(first)
        for duplicate in duplicates { body(duplicate) }
    }
}

/// Where each job held here came from: the delivery that brought it, and copies that arrived
/// while it was held. Registered by `Ingest` as messages arrive, taken by `Settlement` (or by
/// `Ingest` for a refused job) to settle them. One lock.
final class Deliveries: Sendable {
    private let byJob = Locked<[JobID: Origins]>([:])

    /// Registers a burst's deliveries, by position: whether each was a copy of a job held here
    /// already (set aside: it is settled with the original).
    func register(_ ids: [JobID], _ origins: [Origin]) -> [Bool] {
        byJob.withLock { byJob in
            var copies: [Bool] = []
            copies.reserveCapacity(ids.count)
            for position in ids.indices {
                let before = byJob.count
                let origin = origins[position]
                byJob[ids[position], default: Origins(first: origin)].add(origin)
                copies.append(byJob.count == before)
            }
            return copies
        }
    }

    func take(_ id: JobID) -> Origins? { byJob.withLock { $0.removeValue(forKey: id) } }
}
