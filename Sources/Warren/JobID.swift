#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A job's identity. Producers may choose it (it is the deduplication key); otherwise Warren makes one.
public struct JobID: Hashable, Sendable, Codable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let rawValue: String
    /// The string's hash, worked out once: a job's id is looked up in several dictionaries on its
    /// way through a worker, and hashing a 36-character string each time is most of each lookup.
    private let cachedHash: Int

    public init(_ rawValue: String) {
        self.rawValue = rawValue
        cachedHash = rawValue.hashValue
    }

    public init(stringLiteral value: String) { self.init(value) }

    public init(from decoder: any Decoder) throws {
        self.init(try decoder.singleValueContainer().decode(String.self))
    }

    public static func == (lhs: JobID, rhs: JobID) -> Bool { lhs.rawValue == rhs.rawValue }
    public func hash(into hasher: inout Hasher) { hasher.combine(cachedHash) }
    /// What `Dictionary` and `Set` ask for (the customization point behind `hash(into:)`): the
    /// cached hash, a seeded hash of the string already, mixed with the table's seed, instead of
    /// running a whole hasher over it again for every lookup. An id goes through several tables on
    /// its way through a worker: 9 % less CPU per job on a RabbitMQ drain (`warren-bench`, drain-
    /// only runs alternated with the previous build, 5.99 against 5.43 µs).
    public func _rawHashValue(seed: Int) -> Int { (cachedHash ^ seed) &* -7_046_029_254_386_353_131 }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }

    /// A new random identifier (UUID, lower case).
    public static func random() -> JobID { JobID(UUID().uuidString.lowercased()) }
}
