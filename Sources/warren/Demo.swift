import ArgumentParser
import Foundation
import Synchronization
import Warren

#if canImport(Glibc)
import Glibc
#endif

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a mixed workload on the embedded broker and show what happened to each kind of job.")

    @Flag(help: "Plain lines even on a terminal.") var plain = false

    func run() async throws {
        let terminal = !plain && isatty(STDOUT_FILENO) == 1
        let started = Date()
        let broker = InMemoryBroker(configuration: QueueConfiguration(
            retryPolicy: RetryPolicy(baseDelay: .milliseconds(200), multiplier: 2, maxDelay: .seconds(2), jitter: 0.2)))
        let queue = JobQueue(broker: broker)
        let registry = try DemoWorkload.registry()
        let pool = WorkerPool(
            broker: broker, registry: registry,
            configuration: WorkerPoolConfiguration(concurrency: 4, reservedForCritical: 1, shutdownGrace: .seconds(2)))
        let display = Display(terminal: terminal, started: started)
        let events = broker.events()
        let progress = broker.events()
        let watcher = Task { for await event in events { await display.show(event, broker: broker) } }
        let runner = Task { await pool.run() }

        print("warren demo — embedded broker, 4 workers + 1 reserved for critical jobs\n")
        let submitted = try await DemoWorkload.submit(to: queue)
        // Cancel the long transcode once it is a quarter done.
        let transcode = submitted.transcode
        Task {
            for await event in progress where event.id == transcode {
                if case let .progress(percent) = event.kind, percent >= 25 {
                    _ = await queue.cancel(transcode)
                    break
                }
            }
        }
        for id in submitted.all { _ = await broker.outcome(of: id) }
        pool.shutdown()
        await runner.value
        await broker.close()
        await watcher.value
        await display.finish()

        var jobs: [Job] = []
        for id in submitted.all { if let job = await broker.snapshot(id) { jobs.append(job) } }
        print(DemoWorkload.summary(jobs, statistics: await broker.statistics(), elapsed: Date().timeIntervalSince(started)))
    }
}

/// Prints events as they happen: colored lines and a live status line on a terminal, plain lines otherwise.
actor Display {
    let terminal: Bool
    let started: Date
    var counts: [String: Int] = [:]
    var statusShown = false

    init(terminal: Bool, started: Date) {
        self.terminal = terminal
        self.started = started
    }

    func show(_ event: JobEvent, broker: InMemoryBroker) async {
        counts[event.label, default: 0] += 1
        let time = String(format: "%5.2fs", event.at.timeIntervalSince(started))
        let detail: String? = switch event.kind {
        case .enqueued: nil
        case let .started(attempt): attempt > 1 ? "started (attempt \(attempt))" : "started"
        case let .progress(percent): "progress \(Int(percent))%"
        case let .retrying(attempt, at, error): String(format: "retry #%d in %.2fs after: %@", attempt, at.timeIntervalSince(event.at), error)
        case .completed: "completed"
        case let .failed(attempt, error): "attempt \(attempt) failed: \(error)"
        case let .timedOut(attempt): "attempt \(attempt) timed out"
        case .cancelled: "cancelled"
        case let .deadLettered(reason): "dead-lettered: \(reason)"
        }
        guard let detail else { return redrawStatus() }
        let line = "\(time)  \(event.priority.name.padding(toLength: 10, withPad: " ", startingAt: 0)) \(event.name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(detail)"
        if terminal {
            clearStatus()
            print(color(for: event) + line + "\u{1B}[0m")
            redrawStatus()
        } else {
            print(line)
        }
    }

    private func color(for event: JobEvent) -> String {
        switch event.kind {
        case .completed: "\u{1B}[32m"
        case .failed, .timedOut, .retrying: "\u{1B}[33m"
        case .deadLettered, .cancelled: "\u{1B}[31m"
        case .progress: "\u{1B}[2m"
        default: ""
        }
    }

    private func clearStatus() {
        if statusShown { print("\u{1B}[1A\u{1B}[2K", terminator: "") }
        statusShown = false
    }

    private func redrawStatus() {
        guard terminal else { return }
        clearStatus()
        let done = (counts["completed"] ?? 0) + (counts["cancelled"] ?? 0) + (counts["dead_lettered"] ?? 0)
        print("\u{1B}[1m── \(done)/\(counts["enqueued"] ?? 0) finished · \(counts["started"] ?? 0) starts · \(counts["retrying"] ?? 0) retries · \(counts["dead_lettered"] ?? 0) dead letters\u{1B}[0m")
        statusShown = true
        fflush(nil)
    }

    func finish() {
        if terminal { clearStatus() }
        print("")
    }
}
