import Foundation
import Synchronization
import Warren

/// The demo's job kinds and the mix it submits: every priority, flaky handlers that succeed on
/// retry, one that never does, a dependency chain, a delayed job, a cancelled one, a timed-out one.
enum DemoWorkload {
    struct Image: Codable, Sendable { var file: String; var width: Int }
    struct Email: Codable, Sendable { var to: String; var subject: String }
    struct Payment: Codable, Sendable { var order: Int; var cents: Int }
    struct Step: Codable, Sendable { var dataset: String }
    struct Page: Codable, Sendable { var service: String }
    struct Receipt: Codable, Sendable { var ok: Bool; var note: String }

    static let page = JobKind<Page, Receipt>("alert.page")
    static let thumbnail = JobKind<Image, Receipt>("image.thumbnail")
    static let email = JobKind<Email, Receipt>("email.send")
    static let charge = JobKind<Payment, Receipt>("payment.charge")
    static let extract = JobKind<Step, Receipt>("etl.extract")
    static let transform = JobKind<Step, Receipt>("etl.transform")
    static let load = JobKind<Step, Receipt>("etl.load")
    static let report = JobKind<Step, Receipt>("report.build")
    static let transcode = JobKind<Image, Receipt>("video.transcode")
    static let importer = JobKind<Step, Receipt>("invoice.import")
    static let warm = JobKind<Page, Receipt>("cache.warm")
    static let reminder = JobKind<Email, Receipt>("reminder.send")

    struct Submitted {
        var all: [JobID]
        var transcode: JobID
    }

    struct DemoError: Error, CustomStringConvertible { let description: String }

    static func registry() throws -> HandlerRegistry {
        var registry = HandlerRegistry()
        try registry.register(page) { input, _ in
            try await Task.sleep(for: .milliseconds(20))
            return Receipt(ok: true, note: "paged on-call for \(input.service)")
        }
        try registry.register(thumbnail) { input, context in
            for step in 1...4 {
                try await Task.sleep(for: .milliseconds(60))
                await context.progress(Double(step) * 25)
            }
            return Receipt(ok: true, note: "\(input.file) at \(input.width)px")
        }
        try registry.register(email) { input, _ in
            try await Task.sleep(for: .milliseconds(30))
            return Receipt(ok: true, note: "sent '\(input.subject)' to \(input.to)")
        }
        try registry.register(charge) { input, context in
            try await Task.sleep(for: .milliseconds(40))
            // Every third order's gateway times out once: the retry succeeds.
            if input.order % 3 == 0, context.attempt == 1 { throw DemoError(description: "gateway 503 for order \(input.order)") }
            return Receipt(ok: true, note: "charged \(input.cents) cents")
        }
        for kind in [extract, transform, load] {
            try registry.register(kind, timeout: .seconds(5)) { input, context in
                try await Task.sleep(for: .milliseconds(250))
                await context.progress(100)
                return Receipt(ok: true, note: "\(kind.name) \(input.dataset)")
            }
        }
        try registry.register(report) { input, context in
            // The first attempt hangs past the 500 ms timeout; the retry is quick.
            try await Task.sleep(for: context.attempt == 1 ? .seconds(10) : .milliseconds(100))
            return Receipt(ok: true, note: "report for \(input.dataset)")
        }
        try registry.register(transcode) { input, context in
            for step in 1...20 {
                try await Task.sleep(for: .milliseconds(200))
                await context.progress(Double(step) * 5)
            }
            return Receipt(ok: true, note: "transcoded \(input.file)")
        }
        try registry.register(importer) { input, context in
            try await Task.sleep(for: .milliseconds(30))
            throw DemoError(description: "invoice \(input.dataset) has no customer number (attempt \(context.attempt))")
        }
        try registry.register(warm) { input, _ in
            try await Task.sleep(for: .milliseconds(15))
            return Receipt(ok: true, note: "warmed \(input.service)")
        }
        try registry.register(reminder) { input, _ in Receipt(ok: true, note: "reminded \(input.to)") }
        return registry
    }

    static func submit(to queue: JobQueue) async throws -> Submitted {
        var ids: [JobID] = []
        func add<I, O>(_ kind: JobKind<I, O>, _ input: I, _ options: JobOptions = JobOptions()) async throws -> JobID {
            let id = try await queue.submit(kind, input, options).id
            ids.append(id)
            return id
        }
        for index in 0..<8 { _ = try await add(warm, Page(service: "svc-\(index)"), JobOptions(priority: .background)) }
        for index in 0..<6 { _ = try await add(thumbnail, Image(file: "photo-\(index).jpg", width: 320), JobOptions(priority: .low)) }
        for index in 0..<6 { _ = try await add(email, Email(to: "user\(index)@example.com", subject: "Welcome"), JobOptions(priority: .normal)) }
        for order in 1...6 { _ = try await add(charge, Payment(order: order, cents: order * 1_250), JobOptions(priority: .high, maxRetries: 2)) }
        let transcodeID = try await add(transcode, Image(file: "keynote.mov", width: 1920), JobOptions(priority: .low))
        _ = try await add(report, Step(dataset: "q3"), JobOptions(priority: .normal, timeout: .milliseconds(500), maxRetries: 1))
        _ = try await add(importer, Step(dataset: "INV-0042"), JobOptions(priority: .normal, maxRetries: 2))
        // A dependency chain submitted as one batch: extract → transform → load.
        let chain = try [
            queue.makeJob(extract, Step(dataset: "sales"), JobOptions(id: "etl-extract-sales", priority: .high)),
            queue.makeJob(transform, Step(dataset: "sales"), JobOptions(id: "etl-transform-sales", priority: .high, dependencies: ["etl-extract-sales"])),
            queue.makeJob(load, Step(dataset: "sales"), JobOptions(id: "etl-load-sales", priority: .high, dependencies: ["etl-transform-sales"])),
        ]
        try await queue.submit(batch: chain)
        ids += chain.map(\.id)
        _ = try await add(reminder, Email(to: "ada@example.com", subject: "Your trial ends"), JobOptions(delay: .seconds(2)))
        // The critical page arrives while the pool is busy: it starts at once in the reserved slot.
        try await Task.sleep(for: .milliseconds(150))
        _ = try await add(page, Page(service: "checkout"), JobOptions(priority: .critical))
        return Submitted(all: ids, transcode: transcodeID)
    }

    /// The closing table: one row per kind of job.
    static func summary(_ jobs: [Job], statistics: QueueStatistics, elapsed: Double) -> String {
        struct Row { var total = 0, completed = 0, retried = 0, timedOut = 0, cancelled = 0, dead = 0, run = 0.0, priority = JobPriority.normal }
        var rows: [String: Row] = [:]
        for job in jobs {
            var row = rows[job.name] ?? Row()
            row.total += 1
            row.priority = job.priority
            if job.attempt > 1 { row.retried += 1 }
            if job.errors.contains(where: \.timedOut) { row.timedOut += 1 }
            switch job.status {
            case .completed: row.completed += 1
            case .cancelled: row.cancelled += 1
            case .deadLettered: row.dead += 1
            default: break
            }
            if let start = job.startedAt, let end = job.finishedAt { row.run += end.timeIntervalSince(start) }
            rows[job.name] = row
        }
        var lines = ["Summary"]
        let header = ["job", "priority", "jobs", "done", "retried", "timed out", "cancelled", "dead", "avg run"]
        var table = [header]
        for (name, row) in rows.sorted(by: { ($0.value.priority, $0.key) < ($1.value.priority, $1.key) }) {
            table.append([
                name, row.priority.name, "\(row.total)", "\(row.completed)", "\(row.retried)", "\(row.timedOut)",
                "\(row.cancelled)", "\(row.dead)", String(format: "%.0f ms", row.run / Double(row.total) * 1e3),
            ])
        }
        let widths = header.indices.map { column in table.map { $0[column].count }.max() ?? 0 }
        for (index, row) in table.enumerated() {
            lines.append(row.enumerated().map { column, cell in
                column == 0 ? cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[column] - cell.count) + cell
            }.joined(separator: "  "))
            if index == 0 { lines.append(widths.map { String(repeating: "─", count: $0) }.joined(separator: "  ")) }
        }
        lines.append("")
        for job in jobs where job.status == .deadLettered || job.status == .cancelled {
            lines.append("\(job.status == .cancelled ? "cancelled" : "dead letter"): \(job.name) \(job.id) — \(job.deadLetterReason.map { "\($0)" } ?? "cancelled while running at \(Int(job.progress))%")")
        }
        lines.append(String(
            format: "\n%d jobs in %.1f s · %d attempts · %d retries · run p50 %.0f ms p99 %.0f ms · wait p50 %.0f ms p99 %.0f ms",
            jobs.count, elapsed, statistics.started, statistics.retried, statistics.runDuration.p50 * 1e3,
            statistics.runDuration.p99 * 1e3, statistics.waitDuration.p50 * 1e3, statistics.waitDuration.p99 * 1e3))
        return lines.joined(separator: "\n")
    }
}
