// A worker process for the crash and shutdown tests: consumes one Warren queue from the test broker
// and runs `crash.work` jobs, writing each job id to stdout when its handler ends (before the ack),
// so the test sees every run, including those a SIGKILL will make run twice.
//
//   WarrenTestWorker URL QUEUE PREFETCH CONCURRENCY HANDLER_MILLISECONDS
//
// SIGTERM shuts it down gracefully (it then prints "drained" and exits 0).
import Dispatch
#if canImport(FoundationEssentials)
import FoundationEssentials  // an embedder needs no more: a test checks this binary links no full Foundation
#else
import Foundation
#endif
import Warren
import WarrenAMQP
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 6, let prefetch = UInt16(arguments[3]), let concurrency = Int(arguments[4]),
      let millis = Int(arguments[5]) else {
    _ = "usage: WarrenTestWorker URL QUEUE PREFETCH CONCURRENCY HANDLER_MILLISECONDS\n".withCString { write(2, $0, strlen($0)) }
    exit(2)
}

/// One line, in one write(2): lines from concurrent handlers never interleave, and nothing waits in
/// a buffer when the process is killed.
@Sendable func say(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}

let broker = AMQPBroker(.init(url: try AMQPURL(arguments[1]), queue: arguments[2], prefetch: prefetch))
var registry = HandlerRegistry()
try registry.registerRaw("crash.work") { payload, context in
    if millis > 0 { try await Task.sleep(for: .milliseconds(millis)) }
    say(context.id.rawValue)
    return payload
}
let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: concurrency, shutdownGrace: .seconds(10)))

signal(SIGTERM, SIG_IGN)
let terminate = DispatchSource.makeSignalSource(signal: SIGTERM)
let service = Task { await broker.run(pool) }
terminate.setEventHandler { @Sendable in service.cancel() }
terminate.resume()
await service.value
say("drained")
exit(0)
