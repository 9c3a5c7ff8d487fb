/// Where a job is in its life. Moves only along `canMove(to:)`.
///
/// ```
/// pending ──► queued ──► running ──► completed
///    │          │           ├──► failed ────┬──► retrying ──► queued …
///    │          │           ├──► timedOut ──┤        │
///    │          │           ├──► (interrupted by a shutdown: the same attempt again)
///    │          │           ├──► cancelled           │
///    ▼          ▼           ▼                        ▼
///  cancelled | deadLettered (deadline, dependency, exhausted retries, rejected input)
/// ```
public enum JobStatus: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Accepted, waiting for its dependencies or its not-before time.
    case pending
    /// Ready to run, waiting for a worker.
    case queued
    case running
    case completed
    /// The last attempt threw; a retry or a dead letter follows.
    case failed
    /// The last attempt ran past its timeout; a retry or a dead letter follows.
    case timedOut = "timed_out"
    /// Waiting out its backoff before the next attempt (or, interrupted by a shutdown, about to
    /// run the same attempt again).
    case retrying
    case cancelled
    case deadLettered = "dead_lettered"

    public var description: String { rawValue }

    /// A job in a terminal status never changes again.
    public var isTerminal: Bool {
        switch self {
        case .completed, .cancelled, .deadLettered: true
        default: false
        }
    }

    /// The legal transitions; anything else is a programming error.
    public func canMove(to next: JobStatus) -> Bool {
        switch (self, next) {
        case (.pending, .queued), (.pending, .cancelled), (.pending, .deadLettered):
            true
        case (.queued, .running), (.queued, .cancelled), (.queued, .deadLettered):
            true
        case (.running, .completed), (.running, .failed), (.running, .timedOut),
            (.running, .cancelled), (.running, .deadLettered), (.running, .retrying):
            true
        case (.failed, .retrying), (.failed, .deadLettered),
            (.timedOut, .retrying), (.timedOut, .deadLettered):
            true
        case (.retrying, .queued), (.retrying, .cancelled), (.retrying, .deadLettered):
            true
        default:
            false
        }
    }
}

/// Raised when code tries to move a job along a transition `JobStatus.canMove(to:)` forbids.
public struct IllegalTransition: Error, Equatable, CustomStringConvertible {
    public let job: JobID
    public let from: JobStatus
    public let to: JobStatus
    public var description: String { "job \(job): illegal status transition \(from) → \(to)" }
}
