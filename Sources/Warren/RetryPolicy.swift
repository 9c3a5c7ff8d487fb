#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How long to wait before the next attempt: exponential backoff with jitter.
///
/// The delay before attempt `n + 1` is `base × multiplier^(n − 1)`, capped at `maxDelay`, then spread
/// uniformly over `±jitter` of itself so that jobs failing together do not retry together.
public struct RetryPolicy: Sendable, Equatable {
    public var baseDelay: Duration
    public var multiplier: Double
    public var maxDelay: Duration
    /// Fraction of the delay to spread it by, 0 to 1.
    public var jitter: Double

    public init(
        baseDelay: Duration = .seconds(1), multiplier: Double = 2, maxDelay: Duration = .seconds(300),
        jitter: Double = 0.2
    ) {
        self.baseDelay = baseDelay
        self.multiplier = max(1, multiplier)
        self.maxDelay = maxDelay
        self.jitter = min(1, max(0, jitter))
    }

    public static let `default` = RetryPolicy()
    /// Retries at once (tests and no-backoff queues).
    public static let immediate = RetryPolicy(baseDelay: .zero, jitter: 0)

    /// The delay after the failed attempt number `attempt` (1 for the first attempt).
    public func delay(afterAttempt attempt: Int, using random: inout some RandomNumberGenerator) -> Duration {
        let exponent = Double(max(0, attempt - 1))
        let raw = baseDelay.timeInterval * pow(multiplier, exponent)
        let capped = min(raw, maxDelay.timeInterval)
        guard jitter > 0, capped > 0 else { return .seconds(capped) }
        let unit = Double.random(in: 0..<1, using: &random)
        let spread = capped * (1 - jitter + 2 * jitter * unit)
        return .seconds(min(spread, maxDelay.timeInterval))
    }
}
