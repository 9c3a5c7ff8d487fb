import Foundation
import Testing
import Warren
@testable import WarrenAMQP

@Suite("wire format")
struct WireFormatTests {
    func body(_ message: OutgoingMessage) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(message.body)) as? [String: Any])
    }

    @Test func eventBodiesAreJSONWithAwkwardTextIntact() throws {
        let awkward = "quote \" backslash \\ slash / newline \n tab \t bell \u{7} nul \u{0} é 😀"
        var job = Job(id: "id-\"1\"", name: "orders.confirm", priority: .high, maxRetries: 3, attempt: 3)
        job.errors = [AttemptError(attempt: 2, message: awkward, at: Date())]
        job.notBefore = Date(timeIntervalSince1970: 1_795_452_002.75)
        let now = Date(timeIntervalSince1970: 1_795_452_000.999)

        let retrying = WireFormat.event(.retrying, job: job, queue: "billing", reason: nil, now: now)
        let fields = try body(retrying)
        #expect(fields["event"] as? String == "retrying" && fields["id"] as? String == "id-\"1\"")
        #expect(fields["name"] as? String == "orders.confirm" && fields["queue"] as? String == "billing")
        #expect(fields["priority"] as? String == "high" && fields["attempt"] as? Int == 2)
        #expect(fields["error"] as? String == awkward, "every character survives the escaping")
        #expect(fields["at"] as? String == "2026-11-23T16:40:00Z" && fields["retry_at"] as? String == "2026-11-23T16:40:02Z")
        #expect(fields["reason"] == nil)
        #expect(retrying.routingKey == "billing.retrying.orders.confirm")

        let completed = try body(WireFormat.event(.completed, job: job, queue: "billing", reason: nil, now: now))
        #expect(Set(completed.keys) == ["event", "id", "name", "queue", "priority", "attempt", "at"], "absent fields are left out")
        #expect(completed["attempt"] as? Int == 3)

        let dead = try body(WireFormat.event(.deadLettered, job: job, queue: "billing", reason: .rejected("no such order"), now: now))
        #expect(dead["reason"] as? String == "rejected" && (dead["error"] as? String)?.contains("no such order") == true)
    }

    @Test func timestampsMatchFoundationsISO8601() {
        for seconds in [0, 951_782_400.5, 1_795_452_000.999, 4_102_444_799] as [TimeInterval] {
            let date = Date(timeIntervalSince1970: seconds)
            #expect(WireFormat.iso8601(date) == date.formatted(.iso8601), "\(date)")
        }
    }
}
