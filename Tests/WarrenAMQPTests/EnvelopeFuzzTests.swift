import Foundation
import Testing
import WarrenConformance
import Warren
@testable import WarrenAMQP

/// A small, fast, seedable generator (SplitMix64), so a failing run can be repeated.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random messages: every header with every AMQP field type and extreme values, random properties
/// and bodies. Decoding returns a job or a reason and never traps; for every job, encoding it,
/// formatting its dates, building its dead letter and events and computing its delays never trap,
/// and decoding its encoding gives back the same job.
///
/// `WARREN_FUZZ_ITERATIONS` sets the number of messages (default 3,000, about a second);
/// `WARREN_FUZZ_SEED` repeats a run. A trap kills the test process: the seed is printed first.
@Suite("envelope fuzz")
struct EnvelopeFuzzTests {
    static let headers = [
        WireFormat.Header.version, WireFormat.Header.job, WireFormat.Header.priority, WireFormat.Header.attempt,
        WireFormat.Header.maxRetries, WireFormat.Header.deadline, WireFormat.Header.timeout, WireFormat.Header.delay,
        WireFormat.Header.dependencies, WireFormat.Header.capabilities, WireFormat.Header.affinity, WireFormat.Header.errors,
        WireFormat.Header.metadata, WireFormat.Header.created, WireFormat.Header.traceparent, WireFormat.Header.tracestate, WireFormat.Header.replayed,
    ]

    struct Fuzzer {
        var random: SeededGenerator

        mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &random) < percent }
        mutating func pick<T>(_ values: [T]) -> T { values.randomElement(using: &random)! }
        mutating func int(_ range: ClosedRange<Int64>) -> Int64 { Int64.random(in: range, using: &random) }

        mutating func extremeInt() -> Int64 {
            let bound = WireFormat.dateRange.upperBound
            return pick([0, 1, -1, .min, .max, .min + 1, .max - 1, bound, bound + 1, 100_000, 100_001, 1_000, 1_001,
                         86_400_000, 86_400_001, WireFormat.delayRange.upperBound, WireFormat.delayRange.upperBound + 1,
                         Int64(Int32.max), int(.min ... .max), int(-1_000...1_000)])
        }

        mutating func extremeDouble() -> Double {
            pick([.infinity, -.infinity, .nan, 1e300, -1e300, 0, -0.0, 1.5, Double(Int64.max), Double(UInt64.max),
                  .greatestFiniteMagnitude, .leastNonzeroMagnitude, Double.random(in: -1e20...1e20, using: &random)])
        }

        mutating func extremeDate() -> Date {
            pick([Date(timeIntervalSince1970: Double(UInt64.max)), Date(timeIntervalSince1970: 0), .distantFuture, .distantPast,
                  Date(timeIntervalSince1970: .nan), Date(timeIntervalSince1970: .infinity), Date(timeIntervalSince1970: -1e300),
                  Date(timeIntervalSince1970: Double(WireFormat.dateRange.upperBound) / 1_000),
                  Date(timeIntervalSince1970: Double(WireFormat.dateRange.upperBound) / 1_000 + 1),
                  Date(timeIntervalSince1970: Double(int(0...4_102_444_800)))])
        }

        mutating func text() -> String {
            pick(["", "a", "high", "urgent", "1", "5", "-1", "9223372036854775807", "1e300", "2026-11-23T16:40:00Z",
                  "9999-12-31T23:59:59Z", "+10000-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "a,b, c", "line\nbreak", "😀é\u{0}",
                  String(repeating: "x", count: Int.random(in: 0...5_000, using: &random)),
                  String((0..<Int.random(in: 0...40, using: &random)).map { _ in Character(UnicodeScalar(UInt8.random(in: 32...126, using: &random))) })])
        }

        mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) } }

        /// Any AMQP value, nested a little.
        mutating func anyValue(depth: Int = 0) -> AMQPValue {
            switch Int.random(in: 0..<(depth < 2 ? 10 : 8), using: &random) {
            case 0: return .bool(chance(50))
            case 1: return .int(extremeInt())
            case 2: return .double(extremeDouble())
            case 3: return .string(text())
            case 4: return .bytes(chance(50) ? Array(text().utf8) : bytes(Int.random(in: 0...40, using: &random)))
            case 5: return .timestamp(extremeDate())
            case 6: return .decimal(scale: UInt8.random(in: 0...255, using: &random), value: UInt32.random(in: 0...UInt32.max, using: &random))
            case 7: return .void
            case 8: return .array((0..<Int.random(in: 0...4, using: &random)).map { _ in anyValue(depth: depth + 1) })
            default:
                var table: [String: AMQPValue] = [:]
                for _ in 0..<Int.random(in: 0...4, using: &random) {
                    table[pick(["attempt", "message", "at", "timed_out", "k", text()])] = anyValue(depth: depth + 1)
                }
                return .table(table)
            }
        }

        mutating func validDate() -> AMQPValue {
            let millis = int(WireFormat.dateRange)
            switch Int.random(in: 0..<3, using: &random) {
            case 0: return .int(millis)
            case 1: return .timestamp(Date(timeIntervalSince1970: Double(millis / 1_000)))
            default: return .string(WireFormat.iso8601(Date(timeIntervalSince1970: Double(millis) / 1_000)))
            }
        }

        mutating func names() -> AMQPValue {
            let names = (0..<Int.random(in: 0...4, using: &random)).map { _ in pick(["a", "b", "gpu", "job-1", "x y", text()]) }
            return chance(70) ? .array(names.map { .string($0) }) : .string(names.joined(separator: ","))
        }

        /// A value of the header's documented type, mostly in range.
        mutating func validValue(_ header: String) -> AMQPValue {
            switch header {
            case WireFormat.Header.version: return .int(1)
            case WireFormat.Header.priority: return .string(pick(JobPriority.allCases).name)
            case WireFormat.Header.attempt: return .int(int(WireFormat.attemptRange))
            case WireFormat.Header.maxRetries: return .int(int(0...1_000))
            case WireFormat.Header.deadline, WireFormat.Header.created: return validDate()
            case WireFormat.Header.timeout: return .int(int(1...86_400_000))
            case WireFormat.Header.delay: return .int(chance(30) ? 0 : int(WireFormat.delayRange))
            case WireFormat.Header.dependencies, WireFormat.Header.capabilities: return names()
            case WireFormat.Header.errors:
                return .array((0..<Int.random(in: 0...(chance(10) ? 60 : 4), using: &random)).map { index in
                    var entry: [String: AMQPValue] = ["attempt": .int(Int64(index + 1)), "message": .string(text())]
                    if chance(80) { entry["at"] = validDate() }
                    if chance(50) { entry["timed_out"] = .bool(chance(50)) }
                    return .table(entry)
                })
            case WireFormat.Header.metadata:
                var table: [String: AMQPValue] = [:]
                for _ in 0..<Int.random(in: 0...3, using: &random) {
                    table[pick(["tenant", "warren.reply-to", "warren.replayed", "traceparent", text()])] = .string(text())
                }
                return .table(table)
            case WireFormat.Header.replayed: return .timestamp(Date())
            default: return .string(text())
            }
        }

        mutating func body() -> [UInt8] {
            switch Int.random(in: 0..<8, using: &random) {
            case 0: return []
            case 1: return bytes(Int.random(in: 1...200, using: &random))
            case 2: return Array(#"{"a":"#.utf8)
            case 3: return Array(#"{"n":1,"s":"é😀","l":[true,null,1.5e3]}"#.utf8)
            case 4: return Array(pick(["2", "\"x\"", "[]", "null", "{}"]).utf8)
            case 5: return Array(repeating: UInt8(ascii: " "), count: pick([4_095, 4_096, 4_097])) // around the fuzz limit
            case 6: return Array("{\"t\":\"\(text().replacingOccurrences(of: "\\", with: "").replacingOccurrences(of: "\"", with: ""))\"}".utf8)
            default: return Array(#"{"ok":true}"#.utf8)
            }
        }

        mutating func message() -> IncomingMessage {
            var headers: [String: AMQPValue] = [:]
            for header in EnvelopeFuzzTests.headers where chance(30) {
                headers[header] = chance(93) ? validValue(header) : anyValue()
            }
            if chance(10) { headers["x-other"] = anyValue() }
            let properties = MessageProperties(
                contentType: chance(80) ? "application/json" : pick([nil, "", "text/plain", "application/vnd.api+json"]),
                contentEncoding: chance(90) ? nil : pick(["utf-8", "gzip", "", "IDENTITY"]), headers: headers,
                deliveryMode: 2, correlationID: chance(30) ? text() : nil, replyTo: chance(30) ? pick(["", "replies", text()]) : nil,
                messageID: chance(80) ? pick(["", "job-\(int(0...1_000_000))", text()]) : nil,
                timestamp: chance(30) ? (chance(70) ? Date(timeIntervalSince1970: Double(int(0...253_402_300_799))) : extremeDate()) : nil,
                type: chance(80) ? pick(["", "email.send", "a\nb", String(repeating: "n", count: 300), text()]) : nil)
            return IncomingMessage(
                deliveryTag: 1, redelivered: false, exchange: pick(["warren", "warren.delay.0", "warren.delay.deliver"]),
                routingKey: pick(["default.normal", Topology.delayRoutingKey(seconds: 3, destination: "default.high"), text()]),
                consumerTag: "warren.1.normal", properties: properties, body: body())
        }
    }

    static func millis(_ date: Date?) -> Int64? { date.map(WireFormat.millis) }

    @Test(.timeLimit(.minutes(5)))
    func randomMessagesDecodeToAJobOrAReasonAndJobsRoundTrip() async throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = environment["WARREN_FUZZ_ITERATIONS"].flatMap { Int($0) }.map { max(1, min($0, 100_000_000)) } ?? 3_000
        let seed = environment["WARREN_FUZZ_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
        // Printed first: a trap ends the process without a test report.
        print("envelope fuzz: seed \(seed), \(iterations) iterations (WARREN_FUZZ_SEED=\(seed) repeats it)")
        var fuzzer = Fuzzer(random: SeededGenerator(seed: seed))
        let limits = WireFormat.Limits(maxBodyBytes: 4_096)
        var jobs = 0, reasons: [String: Int] = [:]
        for iteration in 0..<iterations {
            // Yields now and then: a cooperative thread kept busy for a second makes the timers
            // of the tests running beside it late.
            if iteration % 100 == 0 { await Task.yield() }
            let message = fuzzer.message()
            let now = Date()
            // Not `\(message.properties)`: Foundation's description of a NaN date traps.
            let p = message.properties
            let context = Comment(rawValue: """
                seed \(seed), iteration \(iteration): headers \(p.headers), timestamp \(p.timestamp.map { "\($0.timeIntervalSince1970)" } ?? "none"), \
                type \(p.type ?? "none"), id \(p.messageID ?? "none"), body \(message.body.count) bytes
                """)
            let job: Job
            switch WireFormat.decode(message, queue: "default", priority: .high, defaultMaxRetries: 3, limits: limits, now: now) {
            case let .failure(reason):
                reasons[reason.code, default: 0] += 1
                #expect(reason.code == "malformed_message" && !reason.description.isEmpty, context)
                // The arrival dead letter and event of a message that is not a job.
                _ = WireFormat.deadLetter(properties: message.properties, body: message.body, reason: reason, errors: [], attempts: 0,
                                          exchange: message.exchange, routingKey: message.routingKey)
                _ = WireFormat.event(.deadLettered, job: Job(name: "default"), queue: "default", reason: reason)
                continue
            case let .success(decoded):
                job = decoded
            }
            jobs += 1
            for date in [job.createdAt, job.deadline, job.notBefore].compactMap({ $0 }) + job.errors.map(\.at) {
                _ = WireFormat.iso8601(date)
                _ = date.formatted(.iso8601)
                _ = Topology.delaySeconds(date.timeIntervalSinceNow)
                #expect(WireFormat.inRange(date) != nil || date == job.notBefore, context)
            }
            let (properties, body) = WireFormat.encode(job)
            var failed = job
            failed.errors.append(AttemptError(attempt: job.attempt, message: "boom", at: now))
            _ = WireFormat.encode(failed)
            for reason: DeadLetterReason in [.retriesExhausted(attempts: job.attempt, lastError: "boom"), .deadline(job.deadline ?? now), .rejected("no")] {
                _ = reason.description
                _ = WireFormat.deadLetter(properties: message.properties, body: body, reason: reason, errors: failed.errors, attempts: job.attempt,
                                          exchange: message.exchange, routingKey: message.routingKey)
            }
            for event in WireFormat.Event.allCases { _ = WireFormat.event(event, job: failed, queue: "default", reason: nil) }

            let again = IncomingMessage(
                deliveryTag: 2, redelivered: false, exchange: "warren", routingKey: "default.high", consumerTag: "warren.1.high",
                properties: properties, body: body)
            guard case let .success(copy) = WireFormat.decode(again, queue: "default", priority: .high, defaultMaxRetries: 3, limits: limits, now: now) else {
                Issue.record("the encoding of a decoded job does not decode: \(WireFormat.decode(again, queue: "default", priority: .high, defaultMaxRetries: 3, limits: limits)) \(context)")
                continue
            }
            #expect(copy.id == job.id && copy.name == job.name && copy.priority == job.priority, context)
            #expect(copy.attempt == job.attempt && copy.maxRetries == job.maxRetries && copy.timeout == job.timeout, context)
            #expect(Self.millis(copy.deadline) == Self.millis(job.deadline) && Self.millis(copy.createdAt) == Self.millis(job.createdAt), context)
            #expect(copy.dependencies == job.dependencies && copy.requiredCapabilities == job.requiredCapabilities, context)
            #expect(copy.affinity == job.affinity && copy.metadata == job.metadata && copy.payload == job.payload, context)
            let expected = WireFormat.boundedErrors(job.errors)
            #expect(copy.errors.map(\.attempt) == expected.map(\.attempt) && copy.errors.map(\.message) == expected.map(\.message), context)
            #expect(copy.errors.map(\.timedOut) == expected.map(\.timedOut) && copy.errors.map { Self.millis($0.at) } == expected.map { Self.millis($0.at) }, context)
        }
        print("envelope fuzz: \(jobs) jobs, refusals \(reasons)")
        #expect(jobs > iterations / 10, "the generator makes valid jobs often enough to test the round trip")
    }
}
