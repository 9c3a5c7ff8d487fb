/// The five priorities. A smaller raw value is served first.
public enum JobPriority: Int, Sendable, Codable, CaseIterable, Comparable, CustomStringConvertible {
    case critical = 0
    case high = 1
    case normal = 2
    case low = 3
    case background = 4

    public static func < (lhs: JobPriority, rhs: JobPriority) -> Bool { lhs.rawValue < rhs.rawValue }

    public var name: String {
        switch self {
        case .critical: "critical"
        case .high: "high"
        case .normal: "normal"
        case .low: "low"
        case .background: "background"
        }
    }

    public var description: String { name }

    /// Parses a priority name as it appears on the wire and in configuration (case-insensitive).
    public init?(name: String) {
        switch name.lowercased() {
        case "critical": self = .critical
        case "high": self = .high
        case "normal": self = .normal
        case "low": self = .low
        case "background": self = .background
        default: return nil
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let priority = JobPriority(name: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "unknown priority '\(text)'; expected critical, high, normal, low or background")
        }
        self = priority
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(name)
    }
}
