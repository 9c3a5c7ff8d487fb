import Foundation
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
        public static let traceparent = "traceparent"
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

    /// Reads a delivery as a job, or says why it cannot be one.
    public static func decode(
        _ message: IncomingMessage, queue: String, priority: JobPriority, defaultMaxRetries: Int, limits: Limits = Limits(),
        defaults: [String: JobDefaults] = [:]
    ) -> Result<Job, DeadLetterReason> {
        func bad(_ text: String) -> Result<Job, DeadLetterReason> { .failure(.malformedMessage(text)) }
        let p = message.properties
        let headers = p.headers
        guard message.body.count <= limits.maxBodyBytes else {
            return bad("the body is \(message.body.count) bytes, over the limit of \(limits.maxBodyBytes)")
        }
        if let type = p.contentType, type != "application/json", !type.isEmpty, !type.lowercased().contains("json") {
            return bad("content type '\(type)' is not application/json")
        }
        if let encoding = p.contentEncoding?.lowercased(), !["", "utf-8", "utf8", "identity"].contains(encoding) {
            return bad("content encoding '\(encoding)' is not supported; send plain UTF-8 JSON")
        }
        if let version = headers[Header.version] {
            guard let number = version.intValue, number >= 1, number <= Self.version else {
                return bad("\(Header.version) '\(version)' is not supported (this worker reads version \(Self.version))")
            }
        }
        let name = (p.type?.isEmpty == false ? p.type : nil) ?? headers[Header.job]?.stringValue ?? queue
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains(where: { $0.isNewline }) else {
            return bad("job name '\(name.prefix(80))' must be 1 to 255 characters on one line")
        }
        if let named = headers[Header.priority] {
            guard let text = named.stringValue, JobPriority(name: text) != nil else {
                return bad("\(Header.priority) '\(named)' is not one of critical, high, normal, low, background")
            }
        }
        var attempt = 1
        if let value = headers[Header.attempt] {
            guard let number = value.intValue, (1...100_000).contains(number) else {
                return bad("\(Header.attempt) '\(value)' is not a whole number from 1 to 100000")
            }
            attempt = Int(number)
        }
        let named = defaults.isEmpty ? nil : defaults[name]
        var maxRetries = named?.maxRetries ?? defaultMaxRetries
        if let value = headers[Header.maxRetries] {
            guard let number = value.intValue, (0...Int64(limits.maxRetries)).contains(number) else {
                return bad("\(Header.maxRetries) '\(value)' is not a whole number from 0 to \(limits.maxRetries)")
            }
            maxRetries = Int(number)
        }
        var deadline: Date?
        if let value = headers[Header.deadline] {
            guard let date = date(value) else {
                return bad("\(Header.deadline) '\(value)' is not a timestamp, ISO 8601 time or epoch milliseconds")
            }
            deadline = date
        }
        var timeout: Duration?
        if let value = headers[Header.timeout] {
            let maxMillis = Int64(limits.maxTimeout.components.seconds) * 1_000
            guard let millis = value.intValue, (1...maxMillis).contains(millis) else {
                return bad("\(Header.timeout) '\(value)' is not a whole number of milliseconds from 1 to \(maxMillis)")
            }
            timeout = .milliseconds(millis)
        }
        guard let dependencies = strings(headers[Header.dependencies]) else {
            return bad("\(Header.dependencies) must be an array of job ids")
        }
        guard let capabilities = strings(headers[Header.capabilities]) else {
            return bad("\(Header.capabilities) must be an array of names")
        }
        // Whether the body is the JSON its handler expects is for the handler's decoder to say
        // (`undecodable_payload`, naming the field): the same answer on every broker.
        let body = message.body.isEmpty ? Array("{}".utf8) : message.body
        var metadata: [String: String] = [:]
        if case let .table(table)? = headers[Header.metadata] {
            for (key, value) in table { if let text = value.stringValue { metadata[key] = text } }
        }
        if let trace = headers[Header.traceparent]?.stringValue { metadata[Header.traceparent] = trace }
        if headers[Header.replayed] != nil { metadata[replayedKey] = "true" }
        if let replyTo = p.replyTo, !replyTo.isEmpty { metadata[replyToKey] = replyTo }
        if let correlation = p.correlationID { metadata[correlationIDKey] = correlation }
        let id = p.messageID.flatMap { $0.isEmpty ? nil : JobID($0) } ?? .random()
        var job = Job(
            id: id, name: name, payload: Data(body), priority: priority,
            createdAt: headers[Header.created].flatMap(date) ?? p.timestamp ?? Date(), deadline: deadline, timeout: timeout,
            maxRetries: maxRetries, attempt: attempt, dependencies: dependencies.map { JobID($0) },
            requiredCapabilities: named.map { Set(capabilities).union($0.requiredCapabilities) } ?? Set(capabilities), affinity: headers[Header.affinity]?.stringValue, metadata: metadata)
        job.errors = errors(headers[Header.errors])
        return .success(job)
    }

    /// The message for a job: its properties and body.
    public static func encode(_ job: Job) -> (properties: MessageProperties, body: [UInt8]) {
        var headers: [String: AMQPValue] = [
            Header.version: .int(version),
            Header.priority: .string(job.priority.name),
            Header.attempt: .int(Int64(job.attempt)),
            Header.maxRetries: .int(Int64(job.maxRetries)),
            Header.created: .int(Int64((job.createdAt.timeIntervalSince1970 * 1_000).rounded())),
        ]
        if let deadline = job.deadline { headers[Header.deadline] = .int(Int64((deadline.timeIntervalSince1970 * 1_000).rounded())) }
        if let timeout = job.timeout {
            headers[Header.timeout] = .int(max(1, Int64(timeout.components.seconds) * 1_000 + timeout.components.attoseconds / 1_000_000_000_000_000))
        }
        if !job.dependencies.isEmpty { headers[Header.dependencies] = .array(job.dependencies.map { .string($0.rawValue) }) }
        if !job.requiredCapabilities.isEmpty { headers[Header.capabilities] = .array(job.requiredCapabilities.sorted().map { .string($0) }) }
        if let affinity = job.affinity { headers[Header.affinity] = .string(affinity) }
        var metadata = job.metadata
        let replyTo = metadata.removeValue(forKey: replyToKey)
        let correlation = metadata.removeValue(forKey: correlationIDKey)
        if let trace = metadata.removeValue(forKey: Header.traceparent) { headers[Header.traceparent] = .string(trace) }
        if !metadata.isEmpty { headers[Header.metadata] = .table(metadata.mapValues { .string($0) }) }
        if !job.errors.isEmpty {
            // The most recent 20 attempts, each message cut to 2 KB: headers stay small.
            headers[Header.errors] = .array(job.errors.suffix(20).map { error in
                .table([
                    "attempt": .int(Int64(error.attempt)),
                    "message": .string(String(error.message.prefix(2_048))),
                    "at": .int(Int64((error.at.timeIntervalSince1970 * 1_000).rounded())),
                    "timed_out": .bool(error.timedOut),
                ])
            })
        }
        let properties = MessageProperties(
            contentType: "application/json", headers: headers, deliveryMode: 2, correlationID: correlation, replyTo: replyTo,
            messageID: job.id.rawValue, timestamp: job.createdAt, type: job.name)
        return (properties, Array(job.payload))
    }

    /// Headers RabbitMQ adds on dead-lettering; a message republished with them can be dropped
    /// silently when it comes back to a queue already in its `x-death` cycle.
    static let brokerDeathHeaders: Set<String> = [
        "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
    ]

    /// The dead letter for a message: its own properties and body, with the reason added and the
    /// broker's death headers removed.
    static func deadLetter(
        properties original: MessageProperties, body: [UInt8], reason: DeadLetterReason, errors: [AttemptError],
        exchange: String, routingKey: String, now: Date = Date()
    ) -> (properties: MessageProperties, body: [UInt8]) {
        var properties = original
        properties.headers = original.headers.filter { !brokerDeathHeaders.contains($0.key) }
        properties.deliveryMode = 2
        properties.expiration = nil
        let attempts = errors.map(\.attempt).max() ?? (original.headers[Header.attempt]?.intValue).map(Int.init) ?? 0
        properties.headers[Header.deadReason] = .string(reason.code)
        properties.headers[Header.deadError] = .string(String(reason.description.prefix(4_096)))
        properties.headers[Header.deadAttempts] = .int(Int64(attempts))
        properties.headers[Header.deadAt] = .string(iso8601(now))
        properties.headers[Header.originalExchange] = .string(exchange)
        properties.headers[Header.originalRoutingKey] = .string(routingKey)
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

    /// UTC to the second, as `2026-11-23T16:40:00Z`.
    static func iso8601(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        guard gmtime_r(&seconds, &parts) != nil else { return date.formatted(.iso8601) }
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let year = Int(parts.tm_year) + 1900
        guard (0...9999).contains(year) else { return date.formatted(.iso8601) }
        let paddedYear = String(repeating: "0", count: 4 - "\(year)".count) + "\(year)"
        return "\(paddedYear)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }

    static func date(_ value: AMQPValue) -> Date? {
        switch value {
        case let .timestamp(date): return date
        case let .int(millis) where millis > 0: return Date(timeIntervalSince1970: Double(millis) / 1_000)
        case let .double(millis) where millis > 0: return Date(timeIntervalSince1970: millis / 1_000)
        default:
            guard let text = value.stringValue else { return nil }
            if let millis = Int64(text), millis > 0 { return Date(timeIntervalSince1970: Double(millis) / 1_000) }
            return try? Date(text, strategy: .iso8601)
        }
    }

    /// Strings from an array header or a comma-separated string; nil when the header has another type.
    static func strings(_ value: AMQPValue?) -> [String]? {
        switch value {
        case nil: return []
        case let .array(values)?:
            let texts = values.compactMap { value -> String? in if case let .string(text) = value { text } else { nil } }
            return texts.count == values.count ? texts.filter { !$0.isEmpty } : nil
        case let .string(text)?:
            return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        case .some:
            return nil
        }
    }

    static func errors(_ value: AMQPValue?) -> [AttemptError] {
        guard case let .array(values)? = value else { return [] }
        return values.compactMap { value in
            guard case let .table(fields) = value, let attempt = fields["attempt"]?.intValue,
                  let message = fields["message"]?.stringValue else { return nil }
            let at = fields["at"].flatMap(date) ?? Date()
            let timedOut: Bool = if case .bool(true)? = fields["timed_out"] { true } else { false }
            return AttemptError(attempt: Int(attempt), message: message, at: at, timedOut: timedOut)
        }
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
