// A worker for two typed jobs. Run it against a RabbitMQ:
//
//   WARREN_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ swift run OrdersWorker
//
// and publish from anywhere (see docs/wire-format.md), for example:
//
//   warren submit orders.total --queue orders --payload '{"items":[{"sku":"a","cents":250,"count":2}]}' --wait
import Dispatch
import Foundation
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
    return Total(cents: order.items.reduce(0) { $0 + $1.cents * $1.count }, items: order.items.count)
}
try handlers.register(sendReceipt, timeout: .seconds(30)) { receipt, context in
    // Throwing fails this attempt; it is retried with backoff, then dead-lettered.
    print("receipt for \(receipt.cents) cents to \(receipt.email) (attempt \(context.attempt))")
    return Nothing()
}

let url = try AMQPURL(ProcessInfo.processInfo.environment["WARREN_BROKER_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/")
let broker = AMQPBroker(.init(url: url, queue: "orders", prefetch: 100))
let pool = WorkerPool(
    broker: broker, registry: handlers,
    configuration: WorkerPoolConfiguration(concurrency: 8, reservedForCritical: 1, shutdownGrace: .seconds(20)))

// SIGTERM: stop consuming, hand unstarted jobs back, let running ones finish, close.
signal(SIGTERM, SIG_IGN)
let terminate = DispatchSource.makeSignalSource(signal: SIGTERM)
let worker = Task { await broker.run(pool) }
terminate.setEventHandler { @Sendable in worker.cancel() }
terminate.resume()
print("consuming queue 'orders' at \(url)")
await worker.value
