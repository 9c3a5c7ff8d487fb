import Foundation

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

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }

    /// A new random identifier (UUID, lower case).
    public static func random() -> JobID { JobID(UUID().uuidString.lowercased()) }
}
