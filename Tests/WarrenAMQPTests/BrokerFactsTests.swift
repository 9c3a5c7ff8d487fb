import Foundation
import Testing
@testable import WarrenAMQP

/// What Warren reads from the configuration and from the broker about RabbitMQ: address lists,
/// versions, and the queue arguments that follow from them.
@Suite("Broker addresses, versions and queue arguments")
struct BrokerFactsTests {
    @Test func aListOfURLsSplitsOnlyWhereASchemeFollows() throws {
        let urls = try AMQPURL.list("amqp://u:p@node1:5672/vh, amqp://u:p@node2:5673/vh,AMQPS://u:p,w@node3/vh")
        #expect(urls.map(\.host) == ["node1", "node2", "node3"])
        #expect(urls.map(\.port) == [5672, 5673, 5671])
        #expect(urls.allSatisfy { $0.vhost == "vh" } && urls[2].tls)
        #expect(urls[2].password == "p,w", "a comma not followed by a scheme belongs to the URL")
        #expect(try AMQPURL.list("amqp://localhost/").count == 1)
        let inherited = try AMQPURL.list("amqp://app:pw@node1/,amqp://node2/,amqp://other:x@node3/")
        #expect(inherited.map(\.user) == ["app", "app", "other"] && inherited.map(\.password) == ["pw", "pw", "x"],
                "an address without user-info takes the first one's")
    }

    @Test func whatIsNotAListOfURLsIsRefused() {
        for text in [
            "amqp://node1,node2:5672/", "amqp://a/,", "amqp://a/, ,amqp://b/", "amqp://a/,http://b/", "amqp://u:secret@a b/",
            "amqp://a/,,amqp://b/", "amqp://a/;amqp://b/", "amqp://a/one,amqp://b/two", "", "  ",
        ] {
            #expect(throws: AMQPError.self, "\(text)") { try AMQPURL.list(text) }
        }
        do {
            _ = try AMQPURL.list("amqp://u:secret@node1,node2/")
            Issue.record("hosts separated by a comma were taken")
        } catch {
            #expect("\(error)".contains("whole URLs separated by commas"))
        }
    }

    @Test func versionsCompareAndSayWhatTheBrokerCounts() {
        #expect(BrokerVersion("4.0.5") == BrokerVersion(major: 4, minor: 0, patch: 5))
        #expect(BrokerVersion("3.10.8") < BrokerVersion("4.0.0"))
        #expect(BrokerVersion("4.3.0-rc.1") == BrokerVersion(major: 4, minor: 3, patch: 0))
        #expect(BrokerVersion("") == BrokerVersion(major: 0, minor: 0, patch: 0))
        #expect(BrokerVersion("99999999999999999999.1") == BrokerVersion(major: 0, minor: 1, patch: 0), "absurd numbers do not trap")
        #expect(BrokerVersion("4.0.5").quorumCountsNack && !BrokerVersion("4.3.0").quorumCountsNack)
        #expect(BrokerVersion("4.0.5").quorumTakesUnlimitedDeliveries && !BrokerVersion("3.13.7").quorumTakesUnlimitedDeliveries)
    }

    @Test func quorumQueuesDeadLetterWhatExhaustsTheirDeliveryLimit() {
        let quorum = Topology(queue: "jobs", queueType: .quorum, deliveryLimit: 7)
        let arguments = quorum.priorityQueueArguments
        #expect(arguments["x-delivery-limit"] == .int(7))
        #expect(arguments["x-dead-letter-exchange"] == .string(Topology.deadExchange))
        #expect(arguments["x-dead-letter-routing-key"] == .string(quorum.deadRoutingKey))
        #expect(arguments["x-dead-letter-strategy"] == .string("at-least-once"))
        #expect(arguments["x-overflow"] == .string("reject-publish"), "at-least-once dead-lettering needs it")
        #expect(quorum.deadQueueArguments(on: BrokerVersion("4.0.5"))["x-delivery-limit"] == .int(-1))
        #expect(quorum.deadQueueArguments(on: BrokerVersion("3.10.8"))["x-delivery-limit"] == nil)
        let classic = Topology(queue: "jobs")
        #expect(classic.priorityQueueArguments == ["x-queue-type": .string("classic")], "classic queues keep the arguments they had")
        #expect(Topology(queue: "q", deliveryLimit: 0).deliveryLimit == 1 && Topology(queue: "q", deliveryLimit: .max).deliveryLimit == 1_000_000)
    }
}
