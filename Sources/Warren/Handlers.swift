#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
public import Instrumentation
public import Logging
import Tracing

/// A kind of job: its explicit name on the wire and its typed input and output. The name is
/// explicit (never derived from a Swift type) so renaming a type never orphans queued jobs.
public struct JobKind<Input: Codable & Sendable, Output: Codable & Sendable>: Sendable {
    public let name: String
    public init(_ name: String) { self.name = name }
}

/// An empty value, for jobs without input or output.
public struct Nothing: Codable, Sendable, Equatable {
    public init() {}
}

/// What a handler sees of its job while it runs.
public struct JobContext: Sendable {
    public let id: JobID
    public let name: String
    public let attempt: Int
    public let priority: JobPriority
    public let metadata: [String: String]
    private let broker: any WorkSource
    private let poolLogger: Logger
    private let tracer: (any Tracer)?
    private let traceContext: InstrumentationContext

    init(job: Job, broker: any WorkSource, logger: Logger, tracer: (any Tracer)? = nil, context: InstrumentationContext = .topLevel) {
        id = job.id
        name = job.name
        attempt = job.attempt
        priority = job.priority
        metadata = job.metadata
        self.broker = broker
        poolLogger = logger
        self.tracer = tracer
        traceContext = context
    }

    /// Writes the attempt's trace context into an outgoing call (HTTP headers, a child process's
    /// environment), so what the handler calls continues the trace: W3C `traceparent` and
    /// `tracestate` with `TraceContextTracer`. Writes nothing when the pool traces nothing.
    public func injectTraceContext<Inject: Injector>(into carrier: inout Inject.Carrier, using injector: Inject) {
        tracer?.inject(traceContext, into: &carrier, using: injector)
    }

    /// The worker pool's logger (`WorkerPoolConfiguration.logger`) with the job's id, name and
    /// attempt in its metadata (`job.id`, `job.name`, `job.attempt`).
    public var logger: Logger {
        var logger = poolLogger
        logger[metadataKey: "job.id"] = "\(id)"
        logger[metadataKey: "job.name"] = "\(name)"
        logger[metadataKey: "job.attempt"] = "\(attempt)"
        return logger
    }

    /// Reports progress, 0 to 100.
    public func progress(_ percent: Double) async {
        await broker.reportProgress(id, percent)
    }

    /// True once the job is cancelled or timed out: stop soon (`Task.isCancelled` says the same).
    public var isCancelled: Bool { Task.isCancelled }
}

/// Handlers by job name. Built before the workers start; a name can be registered once.
public struct HandlerRegistry: Sendable {
    struct Entry: Sendable {
        let timeout: Duration?
        let run: @Sendable (Job, JobContext) async throws -> Data
    }
    private(set) var entries: [String: Entry] = [:]

    public init() {}

    public var names: [String] { entries.keys.sorted() }

    /// Registers a typed handler. The payload is decoded as `Input` (a payload that does not decode
    /// dead-letters the job with the decoder's message) and the returned `Output` is the result.
    /// - Parameter timeout: used for jobs that carry no timeout of their own.
    public mutating func register<Input, Output>(
        _ kind: JobKind<Input, Output>, timeout: Duration? = nil,
        _ handler: @escaping @Sendable (Input, JobContext) async throws -> Output
    ) throws(RegistrationError) {
        guard !kind.name.isEmpty else { throw .emptyName }
        guard entries[kind.name] == nil else { throw .duplicate(kind.name) }
        entries[kind.name] = Entry(timeout: timeout) { job, context in
            let input: Input
            do {
                input = try JSONDecoder().decode(Input.self, from: job.payload)
            } catch {
                throw UndecodableInput(detail: describe(error, decoding: Input.self))
            }
            let output = try await handler(input, context)
            return try JSONEncoder().encode(output)
        }
    }

    /// Registers a handler that works on raw JSON bytes.
    public mutating func registerRaw(
        _ name: String, timeout: Duration? = nil,
        _ handler: @escaping @Sendable (Data, JobContext) async throws -> Data
    ) throws(RegistrationError) {
        guard !name.isEmpty else { throw .emptyName }
        guard entries[name] == nil else { throw .duplicate(name) }
        entries[name] = Entry(timeout: timeout) { job, context in try await handler(job.payload, context) }
    }

    func entry(_ name: String) -> Entry? { entries[name] }
}

public enum RegistrationError: Error, Equatable, CustomStringConvertible {
    case duplicate(String)
    case emptyName
    public var description: String {
        switch self {
        case let .duplicate(name): "a handler for '\(name)' is already registered"
        case .emptyName: "a job name cannot be empty"
        }
    }
}

/// The payload did not decode as the handler's input.
struct UndecodableInput: Error {
    let detail: String
}

/// A decoding error as a sentence a person can act on: which field, what was wrong.
func describe<T>(_ error: any Error, decoding type: T.Type) -> String {
    func path(_ context: DecodingError.Context) -> String {
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return path.isEmpty ? "the payload" : "'\(path)'"
    }
    let target = String(describing: type)
    guard let error = error as? DecodingError else { return "\(target): \(error)" }
    switch error {
    case let .keyNotFound(key, context):
        return "\(target): missing key '\(key.stringValue)' in \(path(context))"
    case let .typeMismatch(expected, context):
        return "\(target): \(path(context)) should be \(expected): \(context.debugDescription)"
    case let .valueNotFound(expected, context):
        return "\(target): \(path(context)) is null, expected \(expected)"
    case let .dataCorrupted(context) where context.codingPath.isEmpty:
        // Foundation's JSONDecoder says "not valid JSON", naming no field, also of valid JSON
        // holding a number its field's type cannot take.
        return "\(target): the payload does not decode: \(context.debugDescription) "
            + "(JSONDecoder says so too of a number its field cannot hold, such as 1.5 or 1e30 for an Int)"
    case let .dataCorrupted(context):
        return "\(target): \(path(context)) is not valid: \(context.debugDescription)"
    @unknown default:
        return "\(target): \(error)"
    }
}
