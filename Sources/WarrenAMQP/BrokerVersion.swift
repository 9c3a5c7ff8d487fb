/// A RabbitMQ version as the broker announces it at login (`4.0.5`, `3.10.8`, `4.3.0-rc.1`):
/// what Warren needs to know about its behaviour that the protocol does not say.
public struct BrokerVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
    public let major: Int
    public let minor: Int
    public let patch: Int

    public init(major: Int, minor: Int, patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// Reads up to three dot-separated numbers; what does not parse (or is absurdly long) counts as 0.
    public init(_ text: String) {
        let numbers = text.split(separator: ".", maxSplits: 3, omittingEmptySubsequences: false).prefix(3).map { part in
            let digits = part.prefix { $0.isASCII && $0.isNumber }
            return digits.count <= 6 ? Int(digits) ?? 0 : 0
        }
        major = numbers.count > 0 ? numbers[0] : 0
        minor = numbers.count > 1 ? numbers[1] : 0
        patch = numbers.count > 2 ? numbers[2] : 0
    }

    public static func < (a: BrokerVersion, b: BrokerVersion) -> Bool {
        (a.major, a.minor, a.patch) < (b.major, b.minor, b.patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    /// Whether a quorum queue counts a `basic.nack` with requeue toward its delivery limit:
    /// every return counted before 4.3 (rabbitmq-server#15387).
    var quorumCountsNack: Bool { self < BrokerVersion(major: 4, minor: 3, patch: 0) }

    /// Whether a quorum queue takes `x-delivery-limit: -1` (no limit); 4.0 made 20 the default.
    var quorumTakesUnlimitedDeliveries: Bool { major >= 4 }
}
