import Foundation
public import Warren

/// What `warren submit --wait` prints for a job that was dead-lettered.
///
/// A reply's reason arrives from `AMQPTools.submit` as `.rejected("<x-warren-dead-reason>: <the
/// worker's description>")`: that is told as the worker described it, with its code, so a job whose
/// retries ran out does not read as one the handler rejected.
public func deadLetterMessage(_ reason: DeadLetterReason) -> String {
    if case let .rejected(text) = reason, let separator = text.range(of: ": ") {
        let code = text[..<separator.lowerBound]
        if !code.isEmpty, code.allSatisfy({ $0.isLowercase || $0 == "_" }) {
            return "\(text[separator.upperBound...]) (reason \(code))"
        }
    }
    return "\(reason.description) (reason \(reason.code))"
}
