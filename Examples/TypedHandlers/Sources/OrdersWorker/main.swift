// A worker for two typed jobs. Run it against a RabbitMQ:
//
//   WARREN_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ swift run OrdersWorker
//
// (WARREN_QUEUE_NAME picks another queue than `orders`.)
// and publish from anywhere (see docs/wire-format.md), for example:
//
//   warren submit orders.total --queue orders --payload '{"items":[{"sku":"a","cents":250,"count":2}]}' --wait
#if canImport(FoundationEssentials)
import FoundationEssentials  // Warren needs no more; full Foundation would map ~10 MiB more (ICU)
#else
import Foundation
#endif
import Logging
import ServiceLifecycle
import Warren
import WarrenAMQP

struct Order: Codable, Sendable {
    struct Item: Codable, Sendable {
        var sku: String
        var cents: Int
        var count: Int
    }
    var items: [Item]
}

struct Total: Codable, Sendable {
    var cents: Int
    var items: Int
}

struct Receipt: Codable, Sendable {
    var email: String
    var cents: Int
}

/// Explicit, stable names: they are what producers put in the message `type`.
let orderTotal = JobKind<Order, Total>("orders.total")
let sendReceipt = JobKind<Receipt, Nothing>("orders.receipt")

struct EmptyOrder: Error, CustomStringConvertible {
    var description: String { "an order needs at least one item" }
}

var handlers = HandlerRegistry()
try handlers.register(orderTotal, timeout: .seconds(5)) { order, context in
    // A payload that does not decode as `Order` never gets here: it is dead-lettered with the field named.
    guard !order.items.isEmpty else { throw JobRejected(EmptyOrder().description) }  // no retry: it can never succeed
    await context.progress(50)
    // Numbers come from outside: arithmetic that overflows would trap and take the whole worker
    // down (and, on classic queues, again on every redelivery), so it is checked and refused.
    var cents = 0
    for item in order.items {
        let (line, lineOverflow) = item.cents.multipliedReportingOverflow(by: item.count)
        let (sum, sumOverflow) = cents.addingReportingOverflow(line)
        guard !lineOverflow, !sumOverflow else { throw JobRejected("the order's total does not fit in 64 bits") }
        cents = sum
    }
    return Total(cents: cents, items: order.items.count)
}
try handlers.register(sendReceipt, timeout: .seconds(30)) { receipt, context in
    // Throwing fails this attempt; it is retried with backoff, then dead-lettered.
    context.logger.info("sending the receipt", metadata: ["cents": "\(receipt.cents)"])  // the job's id, name and attempt are in the metadata
    try await Task.sleep(for: .milliseconds(250))  // the mail service
    return Nothing()
}

let environment = ProcessInfo.processInfo.environment
let url = try AMQPURL(environment["WARREN_BROKER_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/")
let queue = environment["WARREN_QUEUE_NAME"] ?? "orders"
let logger = Logger(label: "orders-worker")
let broker = AMQPBroker(.init(url: url, queue: queue, prefetch: 100))
let worker = WarrenWorker(
    broker: broker, registry: handlers,
    configuration: WorkerPoolConfiguration(concurrency: 8, reservedForCritical: 1, shutdownGrace: .seconds(20), logger: logger),
    metricsQueue: queue)  // job metrics through swift-metrics, to the backend your service bootstraps

// SIGTERM or SIGINT: stop consuming, hand unstarted jobs back, let running ones finish, close.
let services = ServiceGroup(configuration: .init(services: [worker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
logger.info("starting", metadata: ["queue": "\(queue)", "broker": "\(url)"])
try await services.run()
logger.info("drained and stopped")
