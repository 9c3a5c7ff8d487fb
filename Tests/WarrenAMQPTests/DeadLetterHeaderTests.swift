import Foundation
import Testing
import Warren
@testable import WarrenAMQP

/// Issue 12, items 7, 8 and 9: what a dead letter says about the job's attempts and destination.
@Suite("dead-letter headers")
struct DeadLetterHeaderTests {
    func errors(_ count: Int, message: (Int) -> String = { "attempt \($0) failed" }) -> [AttemptError] {
        (1...count).map { AttemptError(attempt: $0, message: message($0), at: Date(timeIntervalSince1970: 1_795_452_000 + Double($0))) }
    }

    func entries(_ properties: MessageProperties) throws -> [AttemptError] {
        try #require(WireFormat.errors(properties.headers[WireFormat.Header.errors]))
    }

    /// The message held the errors of attempts 1 and 2; the job's errors (all three) are written.
    @Test func everyAttemptIsInTheDeadLetter() throws {
        let all = errors(3)
        let arrived = MessageProperties(headers: [WireFormat.Header.errors: WireFormat.errorsHeader(Array(all.prefix(2))), WireFormat.Header.attempt: .int(3)])
        let (properties, _) = WireFormat.deadLetter(
            properties: arrived, body: [], reason: .retriesExhausted(attempts: 3, lastError: all[2].message), errors: all, attempts: 3,
            exchange: "warren.delay.deliver", routingKey: "default.high")
        #expect(try entries(properties) == all)
        #expect(properties.headers[WireFormat.Header.deadAttempts] == .int(3))
        #expect(properties.headers[WireFormat.Header.firstFailure]?.text == WireFormat.iso8601(all[0].at))
        #expect(properties.headers[WireFormat.Header.lastFailure]?.text == WireFormat.iso8601(all[2].at))
    }

    /// Long messages keep their end (where stderr says what went wrong), marked with a leading "…".
    @Test func longMessagesKeepTheirEnd() throws {
        let stderr = String(repeating: "noise é 😀 ", count: 1_000) + "FATAL: disk full"
        let (properties, _) = WireFormat.deadLetter(
            properties: MessageProperties(), body: [], reason: .retriesExhausted(attempts: 1, lastError: stderr),
            errors: [AttemptError(attempt: 1, message: stderr, at: Date())], attempts: 1, exchange: "warren", routingKey: "default.normal")
        let message = try #require(try entries(properties).first?.message)
        #expect(message.hasPrefix("…") && message.hasSuffix("FATAL: disk full"))
        #expect(message.utf8.count <= WireFormat.maxErrorBytes)
        let deadError = try #require(properties.headers[WireFormat.Header.deadError]?.text)
        #expect(deadError.hasPrefix("retries exhausted after 1 attempt(s)") && deadError.hasSuffix("FATAL: disk full"))
        #expect(deadError.utf8.count <= 4_096)
    }

    /// Hundreds of attempts: the first ones and the most recent ones are kept, in order.
    @Test func manyErrorsKeepTheFirstAndTheLatest() throws {
        let all = errors(300)
        let kept = try entries(WireFormat.encode({ var job = Job(name: "x"); job.errors = all; return job }()).properties)
        #expect(kept.map(\.attempt) == Array(1...WireFormat.firstErrorsKept) + Array((300 - WireFormat.maxErrors + WireFormat.firstErrorsKept + 1)...300))
    }

    /// A retried job went through the delay cascade; its dead letter names where it was first sent.
    @Test func originalDestinationSkipsTheDelayHop() {
        let key = Topology.delayRoutingKey(seconds: 5, destination: "default.high")
        for exchange in ["warren.delay.0", "warren.delay.2", Topology.deliverExchange] {
            let (properties, _) = WireFormat.deadLetter(
                properties: MessageProperties(), body: [], reason: .rejected("no"), errors: [], attempts: 2, exchange: exchange, routingKey: key)
            #expect(properties.headers[WireFormat.Header.originalExchange] == .string("warren"))
            #expect(properties.headers[WireFormat.Header.originalRoutingKey] == .string("default.high"))
        }
        let direct = Topology.originalDestination(exchange: "warren", routingKey: "default")
        #expect(direct.exchange == "warren" && direct.routingKey == "default")
        let odd = Topology.originalDestination(exchange: "warren.delay.1", routingKey: "1.0.x")
        #expect(odd.exchange == "warren.delay.1" && odd.routingKey == "1.0.x")
    }
}
