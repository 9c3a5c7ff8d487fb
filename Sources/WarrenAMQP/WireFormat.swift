#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import Warren

/// How a Warren job travels as an AMQP message (documented for producers in docs/wire-format.md).
///
/// Body: the payload, JSON. Properties: `message_id` = job id, `type` = job name, `timestamp`,
/// `content_type` application/json, `delivery_mode` 2, `reply_to` / `correlation_id` to get the
/// result back. Headers (all optional): see `Header`. A message with no Warren headers at all — a
/// JSON body and a routing key — runs with the defaults: a random id, the Warren queue's name as job
/// name when `type` is absent, the priority of the queue it arrived in, attempt 1.
public enum WireFormat {
    /// The format version this worker reads and writes.
    public static let version: Int64 = 1

    public enum Header {
        public static let version = "x-warren-version"
        public static let job = "x-warren-job"
        public static let priority = "x-warren-priority"
        public static let attempt = "x-warren-attempt"
        public static let maxRetries = "x-warren-max-retries"
        public static let deadline = "x-warren-deadline"
        public static let timeout = "x-warren-timeout-ms"
        public static let dependencies = "x-warren-dependencies"
        public static let capabilities = "x-warren-capabilities"
        public static let affinity = "x-warren-affinity"
        public static let errors = "x-warren-errors"
        public static let metadata = "x-warren-metadata"
        public static let created = "x-warren-created"
        /// Set by a producer: run the job no sooner than this many milliseconds after it arrives.
        public static let delay = "x-warren-delay"
        public static let traceparent = "traceparent"
        public static let tracestate = "tracestate"
        /// Set by `dead-letters replay`: the job id may have finished here before.
        public static let replayed = "x-warren-replayed"
        // Dead letters.
        public static let deadReason = "x-warren-dead-reason"
        public static let deadError = "x-warren-dead-error"
        public static let deadAttempts = "x-warren-dead-attempts"
        public static let deadAt = "x-warren-dead-at"
        public static let firstFailure = "x-warren-first-failure"
        public static let lastFailure = "x-warren-last-failure"
        public static let originalExchange = "x-warren-original-exchange"
        public static let originalRoutingKey = "x-warren-original-routing-key"
    }

    /// Metadata keys that carry the producer's request for the result.
    public static let replyToKey = "warren.reply-to"
    public static let correlationIDKey = "warren.correlation-id"
    /// Metadata of a job replayed from the dead-letter queue.
    public static let replayedKey = "warren.replayed"

    /// What a worker accepts.
    public struct Limits: Sendable, Equatable {
        public var maxBodyBytes: Int
        public var maxRetries: Int
        public var maxTimeout: Duration
        public init(maxBodyBytes: Int = 8 << 20, maxRetries: Int = 1_000, maxTimeout: Duration = .seconds(86_400)) {
            self.maxBodyBytes = maxBodyBytes
            self.maxRetries = maxRetries
            self.maxTimeout = maxTimeout
        }
    }

    /// The dates a message may carry (deadline, creation time, `timestamp`, errors' `at`), in epoch
    /// milliseconds: 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. Four-digit years are what
    /// ISO 8601 writes without an agreement, and every date in range converts to an `Int64` of
    /// milliseconds, a `Duration` and a `time_t` without overflow.
    public static let dateRange: ClosedRange<Int64> = 0...253_402_300_799_999
    /// `x-warren-delay`: up to the delay cascade's reach, 2^28 − 1 s.
    public static let delayRange: ClosedRange<Int64> = 0...((Int64(1) << Topology.delayLevels) - 1) * 1_000
    /// `x-warren-attempt` and the attempts in `x-warren-errors`.
    public static let attemptRange: ClosedRange<Int64> = 1...100_000

    /// Reads a delivery as a job, or says why it cannot be one. A valid `x-warren-delay` above zero
    /// sets the job's `notBefore` (`now` plus the delay); the receiver sends such a job through the
    /// delay cascade instead of running it.
    public static func decode(
        _ message: IncomingMessage, queue: String, priority: JobPriority, defaultMaxRetries: Int, limits: Limits = Limits(),
        defaults: [String: JobDefaults] = [:], now: Date = Date()
    ) -> Result<Job, DeadLetterReason> {
        func bad(_ text: String) -> Result<Job, DeadLetterReason> { .failure(.malformedMessage(text)) }
        let p = message.properties
        let headers = p.headers
        guard message.body.count <= limits.maxBodyBytes else {
            return bad("the body is \(message.body.count) bytes, over the limit of \(limits.maxBodyBytes)")
        }
        if let type = p.contentType, type != "application/json", !type.isEmpty, !type.lowercased().contains("json") {
            return bad("content type '\(type.prefix(80))' is not application/json")
        }
        if let encoding = p.contentEncoding?.lowercased(), !["", "utf-8", "utf8", "identity"].contains(encoding) {
            return bad("content encoding '\(encoding.prefix(80))' is not supported; send plain UTF-8 JSON")
        }
        if let version = headers[Header.version] {
            guard let number = version.integer, (1...Self.version).contains(number) else {
                return bad("\(Header.version) \(quoted(version)) is not supported (an int; this worker reads version \(Self.version))")
            }
        }
        var name = queue
        if let type = p.type, !type.isEmpty {
            name = type
        } else if let value = headers[Header.job] {
            guard let text = value.text else { return bad("\(Header.job) \(quoted(value)) is not a string") }
            name = text
        }
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains(where: { $0.isNewline }) else {
            return bad("job name '\(name.prefix(80))' must be 1 to 255 characters on one line")
        }
        if let named = headers[Header.priority] {
            guard let text = named.text, JobPriority(name: text) != nil else {
                return bad("\(Header.priority) \(quoted(named)) is not one of critical, high, normal, low, background")
            }
        }
        var attempt = 1
        if let value = headers[Header.attempt] {
            guard let number = value.integer, attemptRange.contains(number) else {
                return bad("\(Header.attempt) \(quoted(value)) is not an int from 1 to 100000")
            }
            attempt = Int(number)
        }
        let named = defaults.isEmpty ? nil : defaults[name]
        var maxRetries = named?.maxRetries ?? defaultMaxRetries
        if let value = headers[Header.maxRetries] {
            let limit = Int64(max(0, limits.maxRetries))
            guard let number = value.integer, (0...limit).contains(number) else {
                return bad("\(Header.maxRetries) \(quoted(value)) is not an int from 0 to \(limit)")
            }
            maxRetries = Int(number)
        }
        var deadline: Date?
        if let value = headers[Header.deadline] {
            guard let date = date(value) else {
                return bad("\(Header.deadline) \(quoted(value)) is not a timestamp, an int of epoch milliseconds or an ISO 8601 string, from 1970 to 9999")
            }
            deadline = date
        }
        var createdAt = now
        if let timestamp = p.timestamp {
            guard let date = inRange(timestamp) else {
                return bad("the timestamp property \(timestamp.timeIntervalSince1970) s is not a time from 1970 to 9999")
            }
            createdAt = date
        }
        if let value = headers[Header.created] {
            guard let date = date(value) else {
                return bad("\(Header.created) \(quoted(value)) is not a timestamp, an int of epoch milliseconds or an ISO 8601 string, from 1970 to 9999")
            }
            createdAt = date
        }
        var timeout: Duration?
        if let value = headers[Header.timeout] {
            // Bounded by a day by default; a configured limit is clamped so the product cannot overflow.
            let maxMillis = Int64(max(1, min(limits.maxTimeout / .milliseconds(1), 1e15)))
            guard let millis = value.integer, (1...maxMillis).contains(millis) else {
                return bad("\(Header.timeout) \(quoted(value)) is not an int of milliseconds from 1 to \(maxMillis)")
            }
            timeout = .milliseconds(millis)
        }
        var notBefore: Date?
        if let value = headers[Header.delay] {
            guard let millis = value.integer, delayRange.contains(millis) else {
                return bad("\(Header.delay) \(quoted(value)) is not an int of milliseconds from 0 to \(delayRange.upperBound)")
            }
            if millis > 0 { notBefore = now.addingTimeInterval(Double(millis) / 1_000) }
        }
        guard let dependencies = strings(headers[Header.dependencies]) else {
            return bad("\(Header.dependencies) must be an array of job ids (strings) or one comma-separated string")
        }
        guard let capabilities = strings(headers[Header.capabilities]) else {
            return bad("\(Header.capabilities) must be an array of names (strings) or one comma-separated string")
        }
        var affinity: String?
        if let value = headers[Header.affinity] {
            guard let text = value.text else { return bad("\(Header.affinity) \(quoted(value)) is not a string") }
            affinity = text
        }
        var metadata: [String: String] = [:]
        if let value = headers[Header.metadata] {
            guard case let .table(table) = value else { return bad("\(Header.metadata) must be a table of strings") }
            for (key, value) in table where !reservedMetadataKeys.contains(key) {
                guard let text = value.text else { return bad("\(Header.metadata) '\(key)' is \(quoted(value)), not a string") }
                metadata[key] = text
            }
        }
        for header in [Header.traceparent, Header.tracestate] {
            guard let value = headers[header] else { continue }
            guard let trace = value.text else { return bad("\(header) \(quoted(value)) is not a string") }
            metadata[header] = trace
        }
        guard let errors = errors(headers[Header.errors], now: now) else {
            return bad("\(Header.errors) must be an array of tables with an int attempt from 1 to 100000, a string message, an optional time at and an optional bool timed_out")
        }
        // The body must be JSON; whether it is the JSON its handler expects is for the handler's
        // decoder to say (`undecodable_payload`, naming the field).
        let body = message.body.isEmpty ? Array("{}".utf8) : message.body
        guard JSONSyntax.isValid(body) else {
            return bad("the body (\(message.body.count) bytes) is not JSON in UTF-8")
        }
        if headers[Header.replayed] != nil { metadata[replayedKey] = "true" }
        if let replyTo = p.replyTo, !replyTo.isEmpty { metadata[replyToKey] = replyTo }
        if let correlation = p.correlationID { metadata[correlationIDKey] = correlation }
        let id = p.messageID.flatMap { $0.isEmpty ? nil : JobID($0) } ?? .random()
        // It would wait for itself until the dependency wait ran out, its message held unacked.
        if dependencies.contains(id.rawValue) { return bad("\(Header.dependencies) names the job itself (\(id))") }
        var job = Job(
            id: id, name: name, payload: Data(body), priority: priority, createdAt: createdAt, notBefore: notBefore,
            deadline: deadline, timeout: timeout, maxRetries: maxRetries, attempt: attempt,
            dependencies: dependencies.map { JobID($0) },
            requiredCapabilities: named.map { Set(capabilities).union($0.requiredCapabilities) } ?? Set(capabilities),
            affinity: affinity, metadata: metadata)
        job.errors = errors
        return .success(job)
    }

    /// Metadata keys that only the message's properties and headers set, never the metadata table.
    static let reservedMetadataKeys: Set<String> = [replyToKey, correlationIDKey, Header.traceparent, Header.tracestate]

    /// A header value as an error message shows it: short, on one line.
    static func show(_ value: AMQPValue) -> String {
        String(value.description.prefix(80).map { $0.isNewline ? " " : $0 })
    }

    /// A header's value for an error message, quoted, with its type when it is not an int (a
    /// string "1000" reads like a right value otherwise).
    static func quoted(_ value: AMQPValue) -> String {
        let kind = switch value {
        case .int: ""
        case .string, .bytes: " (a string)"
        case .double: " (a float)"
        case .bool: " (a boolean)"
        case .timestamp: " (a timestamp)"
        case .array: " (an array)"
        case .table: " (a table)"
        case .decimal: " (a decimal)"
        case .void: " (void)"
        }
        return "'\(show(value))'\(kind)"
    }

    /// The message for a job: its properties and body. Every number is clamped to what the format
    /// allows, so a job made in code with an absurd date or timeout cannot trap here.
    public static func encode(_ job: Job) -> (properties: MessageProperties, body: [UInt8]) {
        var headers: [String: AMQPValue] = [
            Header.version: .int(version),
            Header.priority: .string(job.priority.name),
            Header.attempt: .int(Int64(job.attempt)),
            Header.maxRetries: .int(Int64(job.maxRetries)),
            Header.created: .int(millis(job.createdAt)),
        ]
        if let deadline = job.deadline { headers[Header.deadline] = .int(millis(deadline)) }
        if let timeout = job.timeout {
            headers[Header.timeout] = .int(Int64(max(1, min((timeout / .milliseconds(1)).rounded(), 1e15))))
        }
        if !job.dependencies.isEmpty { headers[Header.dependencies] = .array(job.dependencies.map { .string($0.rawValue) }) }
        if !job.requiredCapabilities.isEmpty { headers[Header.capabilities] = .array(job.requiredCapabilities.sorted().map { .string($0) }) }
        if let affinity = job.affinity { headers[Header.affinity] = .string(affinity) }
        var metadata = job.metadata
        let replyTo = metadata.removeValue(forKey: replyToKey)
        let correlation = metadata.removeValue(forKey: correlationIDKey)
        for header in [Header.traceparent, Header.tracestate] {
            if let trace = metadata.removeValue(forKey: header) { headers[header] = .string(trace) }
        }
        if !metadata.isEmpty { headers[Header.metadata] = .table(metadata.mapValues { .string($0) }) }
        if !job.errors.isEmpty { headers[Header.errors] = errorsHeader(job.errors) }
        let properties = MessageProperties(
            contentType: "application/json", headers: headers, deliveryMode: 2, correlationID: correlation, replyTo: replyTo,
            messageID: job.id.rawValue, timestamp: clamped(job.createdAt), type: job.name)
        return (properties, Array(job.payload))
    }

    /// Errors a message carries: all of them up to `maxErrors`; past that the first
    /// `firstErrorsKept` and the most recent ones (headers must fit in one AMQP frame).
    static let maxErrors = 25
    static let firstErrorsKept = 5
    /// Each error message is cut to this many UTF-8 bytes, keeping its end (where a stack trace or
    /// stderr says what went wrong) after a leading "…".
    static let maxErrorBytes = 2_048

    static func boundedErrors(_ errors: [AttemptError]) -> [AttemptError] {
        let kept = errors.count <= maxErrors ? errors : Array(errors.prefix(firstErrorsKept) + errors.suffix(maxErrors - firstErrorsKept))
        return kept.map { error in
            var error = error
            error.message = keepingEnd(error.message, bytes: maxErrorBytes)
            error.at = clamped(error.at)
            return error
        }
    }

    static func errorsHeader(_ errors: [AttemptError]) -> AMQPValue {
        .array(boundedErrors(errors).map { error in
            .table([
                "attempt": .int(Int64(min(100_000, max(1, error.attempt)))),
                "message": .string(error.message),
                "at": .int(millis(error.at)),
                "timed_out": .bool(error.timedOut),
            ])
        })
    }

    /// `text` if it fits in `bytes` UTF-8 bytes, else "…" and as much of its end as fits.
    static func keepingEnd(_ text: String, bytes: Int) -> String {
        guard text.utf8.count > bytes else { return text }
        let utf8 = Array(text.utf8), marker = "…"
        var start = utf8.count - max(0, bytes - marker.utf8.count)
        // Not in the middle of a character: skip continuation bytes.
        while start < utf8.count, utf8[start] & 0xC0 == 0x80 { start += 1 }
        return marker + String(decoding: utf8[start...], as: UTF8.self)
    }

    /// A long text's beginning and end with "…" between them, in about `bytes` UTF-8 bytes.
    static func keepingEnds(_ text: String, bytes: Int) -> String {
        guard text.utf8.count > bytes else { return text }
        let utf8 = Array(text.utf8)
        var end = bytes / 4
        while end > 0, utf8[end] & 0xC0 == 0x80 { end -= 1 }
        return String(decoding: utf8[..<end], as: UTF8.self) + keepingEnd(text, bytes: bytes - end)
    }

    /// A date as epoch milliseconds, clamped to `dateRange`.
    static func millis(_ date: Date) -> Int64 {
        let millis = (date.timeIntervalSince1970 * 1_000).rounded()
        guard millis >= Double(dateRange.lowerBound) else { return dateRange.lowerBound }
        guard millis <= Double(dateRange.upperBound) else { return dateRange.upperBound }
        return Int64(millis)
    }

    /// The date, or the nearest end of `dateRange` (the start for NaN).
    static func clamped(_ date: Date) -> Date {
        inRange(date) ?? Date(timeIntervalSince1970: Double(millis(date)) / 1_000)
    }

    /// The date when it is inside `dateRange`.
    static func inRange(_ date: Date) -> Date? {
        let seconds = date.timeIntervalSince1970
        // False for NaN too.
        guard seconds >= Double(dateRange.lowerBound) / 1_000, seconds <= Double(dateRange.upperBound) / 1_000 else { return nil }
        return date
    }

    /// Headers RabbitMQ adds on dead-lettering, and the count of returns a quorum queue adds to a
    /// redelivery: a message republished with the former can be dropped silently when it comes
    /// back to a queue already in its `x-death` cycle; the latter describes the old message only.
    static let brokerDeathHeaders: Set<String> = [
        "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
    ]

    /// The dead letter for a message: its own properties and body, with the reason added, the
    /// errors header rewritten from `errors` (every attempt's, when there are any) and the broker's
    /// death headers removed. `attempts` is how many attempts ran; `exchange` and `routingKey` are
    /// where the message arrived from (a delay hop is traced back to the work exchange).
    static func deadLetter(
        properties original: MessageProperties, body: [UInt8], reason: DeadLetterReason, errors: [AttemptError], attempts: Int,
        exchange: String, routingKey: String, now: Date = Date()
    ) -> (properties: MessageProperties, body: [UInt8]) {
        var properties = original
        properties.headers = original.headers.filter { !brokerDeathHeaders.contains($0.key) }
        properties.deliveryMode = 2
        properties.expiration = nil
        let destination = Topology.originalDestination(exchange: exchange, routingKey: routingKey)
        properties.headers[Header.deadReason] = .string(reason.code)
        properties.headers[Header.deadError] = .string(keepingEnds(reason.description, bytes: 4_096))
        properties.headers[Header.deadAttempts] = .int(Int64(max(0, attempts)))
        properties.headers[Header.deadAt] = .string(iso8601(now))
        properties.headers[Header.originalExchange] = .string(destination.exchange)
        properties.headers[Header.originalRoutingKey] = .string(destination.routingKey)
        if !errors.isEmpty { properties.headers[Header.errors] = errorsHeader(errors) }
        if let first = errors.first { properties.headers[Header.firstFailure] = .string(iso8601(first.at)) }
        if let last = errors.last { properties.headers[Header.lastFailure] = .string(iso8601(last.at)) }
        return (properties, body)
    }

    // MARK: Lifecycle events

    /// What a job's end looks like on `warren.events`.
    public enum Event: String, Sendable, CaseIterable {
        case completed
        /// An attempt failed; the next one is scheduled.
        case retrying
        case deadLettered = "dead_lettered"
        case cancelled
    }

    /// A lifecycle event: routing key `<queue>.<event>.<job name>` on the topic exchange
    /// `warren.events`, a transient JSON message (see docs/wire-format.md).
    static func event(_ event: Event, job: Job, queue: String, reason: DeadLetterReason?, now: Date = Date()) -> OutgoingMessage {
        // Written directly rather than through JSONEncoder: with events on, one is made per job
        // attempt, and the encoder was an eighth of the CPU a job cost (`warren bench --amqp-url`).
        var body = JSONObjectWriter()
        body.add("event", event.rawValue)
        body.add("id", job.id.rawValue)
        body.add("name", job.name)
        body.add("queue", queue)
        body.add("priority", job.priority.name)
        body.add("attempt", event == .retrying ? job.attempt - 1 : job.attempt)
        body.add("at", iso8601(now))
        if let error = reason?.description ?? (event == .retrying ? job.errors.last?.message : nil) { body.add("error", error) }
        if let code = reason?.code { body.add("reason", code) }
        if event == .retrying, let retryAt = job.notBefore { body.add("retry_at", iso8601(retryAt)) }
        let properties = MessageProperties(
            contentType: "application/json", deliveryMode: 1, messageID: job.id.rawValue, timestamp: now, type: event.rawValue)
        return OutgoingMessage(
            exchange: Topology.eventsExchange, routingKey: "\(queue).\(event.rawValue).\(job.name)", properties: properties,
            body: body.finish())
    }

    // MARK: Reading header values

    /// UTC to the second, as `2026-11-23T16:40:00Z`; a date outside `dateRange` is written as the
    /// nearest end of it.
    static func iso8601(_ date: Date) -> String {
        let exact = date.timeIntervalSince1970
        // Clamped before the conversion (NaN counts as the start).
        let bounded = exact >= 0 ? min(exact, Double(dateRange.upperBound) / 1_000) : 0
        var seconds = time_t(bounded.rounded(.down))
        var parts = tm()
        guard gmtime_r(&seconds, &parts) != nil else { return "1970-01-01T00:00:00Z" }
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let year = Int(parts.tm_year) + 1900
        let paddedYear = String(repeating: "0", count: max(0, 4 - "\(year)".count)) + "\(year)"
        return "\(paddedYear)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }

    /// A date header: an AMQP timestamp (seconds), an int of epoch milliseconds or an ISO 8601
    /// string, inside `dateRange`; nil for anything else.
    static func date(_ value: AMQPValue) -> Date? {
        switch value {
        case let .timestamp(date):
            return inRange(date)
        case let .int(millis):
            return dateRange.contains(millis) ? Date(timeIntervalSince1970: Double(millis) / 1_000) : nil
        case .string, .bytes:
            // The longest ISO 8601 form Foundation reads is about 30 characters.
            guard let text = value.text, text.utf8.count <= 64, let date = try? Date(text, strategy: .iso8601) else { return nil }
            return inRange(date)
        default:
            return nil
        }
    }

    /// Strings from an array header or a comma-separated string; nil when the header has another type.
    static func strings(_ value: AMQPValue?) -> [String]? {
        switch value {
        case nil: return []
        case let .array(values)?:
            let texts = values.compactMap(\.text)
            return texts.count == values.count ? texts.filter { !$0.isEmpty } : nil
        case let .some(value):
            guard let text = value.text else { return nil }
            return text.split(separator: ",").map { $0.trimmingWhitespace }.filter { !$0.isEmpty }
        }
    }

    /// The errors header; nil when it is not an array of well-formed entries. An entry without `at`
    /// is dated `now`.
    static func errors(_ value: AMQPValue?, now: Date = Date()) -> [AttemptError]? {
        guard let value else { return [] }
        guard case let .array(values) = value else { return nil }
        var errors: [AttemptError] = []
        errors.reserveCapacity(values.count)
        for value in values {
            guard case let .table(fields) = value, let attempt = fields["attempt"]?.integer, attemptRange.contains(attempt),
                  let message = fields["message"]?.text else { return nil }
            var at = now
            if let raw = fields["at"] {
                guard let date = date(raw) else { return nil }
                at = date
            }
            var timedOut = false
            if let raw = fields["timed_out"] {
                guard case let .bool(flag) = raw else { return nil }
                timedOut = flag
            }
            errors.append(AttemptError(attempt: Int(attempt), message: message, at: at, timedOut: timedOut))
        }
        return errors
    }
}

/// A flat JSON object written field by field: strings (escaped as RFC 8259 asks) and integers.
struct JSONObjectWriter {
    private var bytes: [UInt8] = [UInt8(ascii: "{")]

    mutating func add(_ key: String, _ value: String) {
        addKey(key)
        appendString(value)
    }

    mutating func add(_ key: String, _ value: Int) {
        addKey(key)
        bytes += "\(value)".utf8
    }

    mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    private mutating func addKey(_ key: String) {
        if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
        appendString(key)
        bytes.append(UInt8(ascii: ":"))
    }

    private static let hex = Array("0123456789abcdef".utf8)

    private mutating func appendString(_ text: String) {
        let hex = Self.hex
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes += [UInt8(ascii: "\\"), byte]
            case 0x0A: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
