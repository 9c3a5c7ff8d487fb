import Foundation
import Testing
import Warren
@testable import WarrenAMQP

/// A delivery as the connection hands it over, for decoding without a broker.
func incoming(
    _ body: [UInt8] = Array("{}".utf8), headers: [String: AMQPValue] = [:], timestamp: Date? = nil, contentType: String? = "application/json",
    replyTo: String? = nil, correlationID: String? = nil, exchange: String = Topology.exchange, routingKey: String = "default.normal"
) -> IncomingMessage {
    IncomingMessage(
        deliveryTag: 1, redelivered: false, exchange: exchange, routingKey: routingKey, consumerTag: "warren.1.normal",
        properties: MessageProperties(
            contentType: contentType, headers: headers, correlationID: correlationID, replyTo: replyTo, messageID: "job-1",
            timestamp: timestamp, type: "envelope.test"),
        body: body)
}

func decoded(_ message: IncomingMessage, now: Date = Date()) -> Result<Job, DeadLetterReason> {
    WireFormat.decode(message, queue: "default", priority: .normal, defaultMaxRetries: 3, now: now)
}

func isMalformed(_ result: Result<Job, DeadLetterReason>) -> Bool {
    if case .failure(.malformedMessage) = result { true } else { false }
}

/// Issue 12, items 2, 4 and 5: numbers, types and bodies from a message are checked before use.
@Suite("envelope checks")
struct EnvelopeTests {
    /// The four messages that crashed `warren serve`: each is refused as malformed on arrival.
    @Test func outOfRangeNumbersAreMalformedNotTraps() {
        let cases: [(String, IncomingMessage)] = [
            ("deadline double 1e300", incoming(headers: [WireFormat.Header.deadline: .double(1e300)])),
            ("deadline Int64.max", incoming(headers: [WireFormat.Header.deadline: .int(.max)])),
            ("created Int64.max", incoming(headers: [WireFormat.Header.created: .int(.max)])),
            ("timestamp 2^64-1", incoming(timestamp: Date(timeIntervalSince1970: Double(UInt64.max)))),
            ("deadline timestamp 2^64-1", incoming(headers: [WireFormat.Header.deadline: .timestamp(Date(timeIntervalSince1970: Double(UInt64.max)))])),
            ("deadline before 1970", incoming(headers: [WireFormat.Header.deadline: .int(-1)])),
            // Its description (in the reason) must not ask Foundation to describe a NaN date.
            ("deadline timestamp NaN", incoming(headers: [WireFormat.Header.deadline: .timestamp(Date(timeIntervalSince1970: .nan))])),
            ("deadline year 10000", incoming(headers: [WireFormat.Header.deadline: .int(WireFormat.dateRange.upperBound + 1)])),
            ("deadline ISO year 10000", incoming(headers: [WireFormat.Header.deadline: .string("+10000-01-01T00:00:00Z")])),
            ("error at Int64.min", incoming(headers: [WireFormat.Header.errors: .array([.table(["attempt": .int(1), "message": .string("x"), "at": .int(.min)])])])),
            ("error attempt Int64.max", incoming(headers: [WireFormat.Header.errors: .array([.table(["attempt": .int(.max), "message": .string("x")])])])),
            ("attempt 0", incoming(headers: [WireFormat.Header.attempt: .int(0)])),
            ("attempt Int64.min", incoming(headers: [WireFormat.Header.attempt: .int(.min)])),
            ("max retries Int64.max", incoming(headers: [WireFormat.Header.maxRetries: .int(.max)])),
            ("timeout Int64.max", incoming(headers: [WireFormat.Header.timeout: .int(.max)])),
            ("version Int64.min", incoming(headers: [WireFormat.Header.version: .int(.min)])),
            ("delay Int64.max", incoming(headers: [WireFormat.Header.delay: .int(.max)])),
            ("delay -1", incoming(headers: [WireFormat.Header.delay: .int(-1)])),
        ]
        for (name, message) in cases {
            #expect(isMalformed(decoded(message)), "\(name)")
        }
    }

    /// The first-attempt-fails paths: whatever dates a job holds, encoding its retry and building
    /// its dead letter and event never trap.
    /// A job naming itself as its dependency waited for itself, its message held unacked.
    @Test func aJobThatDependsOnItselfIsMalformed() {
        #expect(isMalformed(decoded(incoming(headers: [WireFormat.Header.dependencies: .array([.string("job-1")])]))))
        #expect(!isMalformed(decoded(incoming(headers: [WireFormat.Header.dependencies: .array([.string("job-0")])]))))
    }

    @Test func encodingClampsEveryDate() throws {
        var job = Job(name: "x", createdAt: Date(timeIntervalSince1970: 1e300), deadline: Date(timeIntervalSince1970: -.infinity), timeout: .seconds(Int64.max))
        job.notBefore = Date(timeIntervalSince1970: .nan)
        job.errors = [AttemptError(attempt: 1, message: "boom", at: Date(timeIntervalSince1970: .infinity))]
        let (properties, _) = WireFormat.encode(job)
        #expect(properties.headers[WireFormat.Header.created] == .int(WireFormat.dateRange.upperBound))
        #expect(properties.headers[WireFormat.Header.deadline] == .int(0))
        #expect(properties.headers[WireFormat.Header.timeout]?.integer ?? 0 > 0)
        #expect(RawConnection.epochSeconds(Date(timeIntervalSince1970: 1e300)) > 0)
        #expect(RawConnection.epochSeconds(Date(timeIntervalSince1970: .nan)) == 0)
        _ = WireFormat.deadLetter(properties: properties, body: [], reason: .deadline(job.deadline!), errors: job.errors, attempts: 1,
                                  exchange: "warren", routingKey: "default.normal")
        _ = WireFormat.event(.retrying, job: job, queue: "default", reason: nil)
        #expect(WireFormat.iso8601(Date(timeIntervalSince1970: 1e300)) == "9999-12-31T23:59:59Z")
        #expect(WireFormat.iso8601(Date(timeIntervalSince1970: -1e300)) == "1970-01-01T00:00:00Z")
        #expect(Topology.delaySeconds(1e300) == (1 << 28) - 1)
        #expect(Topology.delaySeconds(.nan) == 0 && Topology.delaySeconds(.infinity) == (1 << 28) - 1)
    }

    /// The retry of a job whose deadline or creation time is the largest the format takes encodes.
    @Test func theLargestAcceptedDatesSurviveARetry() throws {
        let top = AMQPValue.int(WireFormat.dateRange.upperBound)
        let job = try decoded(incoming(headers: [WireFormat.Header.deadline: top, WireFormat.Header.created: top])).get()
        let (properties, _) = WireFormat.encode(job)
        #expect(properties.headers[WireFormat.Header.deadline] == top && properties.headers[WireFormat.Header.created] == top)
    }

    @Test func sleepingUntilAFarDateDoesNotTrapAndCanBeCancelled() async throws {
        for far in [Date(timeIntervalSince1970: 1e300), .distantFuture, Date(timeIntervalSince1970: .infinity)] {
            // The interval is worked out before the sleep looks at cancellation: a cancel that comes
            // first still runs the conversion that trapped.
            let sleeper = Task { try await SystemClock().sleep(until: far) }
            sleeper.cancel()
            await #expect(throws: CancellationError.self) { try await sleeper.value }
        }
        try await SystemClock().sleep(until: Date(timeIntervalSince1970: .nan))
    }

    /// Every header has its documented type: a number where the doc says string, a string or a
    /// double where it says int, is malformed.
    @Test func wrongTypesAreMalformed() {
        let cases: [(String, AMQPValue)] = [
            (WireFormat.Header.version, .string("1")), (WireFormat.Header.version, .double(1)),
            (WireFormat.Header.attempt, .string("2")), (WireFormat.Header.attempt, .double(2)),
            (WireFormat.Header.maxRetries, .string("5")), (WireFormat.Header.maxRetries, .double(5)), (WireFormat.Header.maxRetries, .bool(true)),
            (WireFormat.Header.timeout, .string("1000")), (WireFormat.Header.timeout, .double(1000)),
            (WireFormat.Header.delay, .string("1000")), (WireFormat.Header.delay, .double(1000)),
            (WireFormat.Header.deadline, .double(1_795_452_000_000)), (WireFormat.Header.deadline, .string("1795452000000")),
            (WireFormat.Header.deadline, .bool(true)), (WireFormat.Header.created, .string("soon")),
            (WireFormat.Header.priority, .int(1)), (WireFormat.Header.priority, .string("urgent")),
            (WireFormat.Header.job, .int(7)), (WireFormat.Header.affinity, .int(7)), (WireFormat.Header.traceparent, .int(7)),
            (WireFormat.Header.dependencies, .int(42)), (WireFormat.Header.dependencies, .array([.string("a"), .int(1)])),
            (WireFormat.Header.capabilities, .int(42)), (WireFormat.Header.capabilities, .array([.double(1)])),
            (WireFormat.Header.metadata, .string("a=b")), (WireFormat.Header.metadata, .table(["a": .int(1)])),
            (WireFormat.Header.errors, .string("boom")), (WireFormat.Header.errors, .array([.string("boom")])),
            (WireFormat.Header.errors, .array([.table(["attempt": .string("1"), "message": .string("x")])])),
            (WireFormat.Header.errors, .array([.table(["attempt": .int(1), "message": .int(1)])])),
            (WireFormat.Header.errors, .array([.table(["attempt": .int(1), "message": .string("x"), "timed_out": .int(1)])])),
        ]
        for (header, value) in cases {
            var message = incoming(headers: [header: value])
            if header == WireFormat.Header.job {
                message = IncomingMessage(
                    deliveryTag: 1, redelivered: false, exchange: "", routingKey: "", consumerTag: "",
                    properties: MessageProperties(headers: [header: value]), body: [])
            }
            #expect(isMalformed(decoded(message)), "\(header) = \(value)")
        }
        // A number sent as a string reads like a right value: the reason says its type.
        guard case let .failure(reason) = decoded(incoming(headers: [WireFormat.Header.timeout: .string("1000")])) else {
            Issue.record("a string timeout was accepted")
            return
        }
        #expect("\(reason)".contains("'1000' (a string) is not an int"), "\(reason)")
    }

    /// Where the doc allows several forms, each is read.
    @Test func everyDocumentedFormIsAccepted() throws {
        let millis: Int64 = 1_795_452_000_000
        let date = Date(timeIntervalSince1970: 1_795_452_000)
        for form: AMQPValue in [.timestamp(date), .int(millis), .string("2026-11-23T16:40:00Z"), .bytes(Array("2026-11-23T16:40:00Z".utf8))] {
            let job = try decoded(incoming(headers: [WireFormat.Header.deadline: form, WireFormat.Header.created: form])).get()
            #expect(job.deadline == date && job.createdAt == date, "\(form)")
        }
        for form: AMQPValue in [.array([.string("a"), .string("b")]), .string("a, b"), .bytes(Array("a,b".utf8))] {
            let job = try decoded(incoming(headers: [WireFormat.Header.dependencies: form, WireFormat.Header.capabilities: form])).get()
            #expect(job.dependencies == ["a", "b"] && job.requiredCapabilities == ["a", "b"], "\(form)")
        }
        let job = try decoded(incoming(headers: [
            WireFormat.Header.version: .int(1), WireFormat.Header.attempt: .int(2), WireFormat.Header.maxRetries: .int(5),
            WireFormat.Header.timeout: .int(30_000), WireFormat.Header.priority: .string("high"), WireFormat.Header.affinity: .string("k"),
            WireFormat.Header.metadata: .table(["tenant": .string("acme")]), WireFormat.Header.traceparent: .string("00-ab-cd-01"),
            WireFormat.Header.tracestate: .string("vendor=x"),
            WireFormat.Header.errors: .array([.table(["attempt": .int(1), "message": .string("boom"), "at": .int(millis), "timed_out": .bool(true)])]),
        ])).get()
        #expect(job.attempt == 2 && job.maxRetries == 5 && job.timeout == .milliseconds(30_000) && job.affinity == "k")
        #expect(job.metadata["tenant"] == "acme" && job.metadata["traceparent"] == "00-ab-cd-01" && job.metadata["tracestate"] == "vendor=x")
        let (properties, _) = WireFormat.encode(job)
        #expect(properties.headers[WireFormat.Header.tracestate] == .string("vendor=x") && properties.headers[WireFormat.Header.metadata] == .table(["tenant": .string("acme")]),
                "trace state goes back out as its header, not as metadata")
        #expect(job.errors == [AttemptError(attempt: 1, message: "boom", at: date, timedOut: true)])
    }

    /// `x-warren-delay` sets when the job may start (0 is at once); the header must be an int.
    @Test func delayHeaderSetsNotBefore() throws {
        let now = Date(timeIntervalSince1970: 1_795_452_000)
        let later = try decoded(incoming(headers: [WireFormat.Header.delay: .int(1_500)]), now: now).get()
        #expect(later.notBefore == now.addingTimeInterval(1.5))
        let atOnce = try decoded(incoming(headers: [WireFormat.Header.delay: .int(0)]), now: now).get()
        #expect(atOnce.notBefore == nil)
        let longest = try decoded(incoming(headers: [WireFormat.Header.delay: .int(WireFormat.delayRange.upperBound)]), now: now).get()
        #expect(Topology.delaySeconds(longest.notBefore!.timeIntervalSince(now)) == (1 << 28) - 1)
    }

    /// Bodies that are not JSON in UTF-8 are malformed; an empty body is `{}`; any JSON value is a body.
    @Test func bodiesMustBeJSON() throws {
        var random = SystemRandomNumberGenerator()
        let notJSON: [[UInt8]] = [
            Array(#"{"a":"#.utf8), Array("not json {".utf8), [0xFF, 0xFE, 0x7B, 0x7D], Array(#"{"a":"\#u{FF}"}"#.utf8).map { $0 == 0xC3 ? 0xC0 : $0 },
            [0x22, 0xC3, 0x28, 0x22], Array(#"{"a":1}"#.utf16).flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }, Array("{} {}".utf8),
            (0..<100).map { _ in UInt8.random(in: 0x80...0xFF, using: &random) },
        ]
        for body in notJSON {
            #expect(isMalformed(decoded(incoming(body))), "\(body.prefix(16))")
        }
        #expect(try decoded(incoming([])).get().payload == Data("{}".utf8))
        for body in [#"{"a":[1,2,{"b":null}]}"#, "2", #""text""#, "[]", " {\"é\": \"😀\"} "] {
            #expect(try decoded(incoming(Array(body.utf8))).get().payload == Data(body.utf8), "\(body)")
        }
    }
}
