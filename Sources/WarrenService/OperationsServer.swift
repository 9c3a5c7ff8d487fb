import Foundation
import Hummingbird
import Logging
import NIOCore
import Warren
import WarrenAMQP

/// The operations HTTP server: `/healthz` (the process answers), `/readyz` (connected to RabbitMQ
/// and consuming), `/metrics` (Prometheus text), `/jobs/{id}` (a job this worker has seen recently).
/// Port 0 takes a free port; the "operations server listening" log line says which.
enum OperationsServer {
    static func application(for service: WorkerService, host: String, port: Int) -> some ApplicationProtocol {
        let router = Router()
        router.get("healthz") { _, _ in
            text("ok\n")
        }
        router.get("readyz") { _, _ in
            guard service.isReady else { return text("not ready: \(service.notReadyReason)\n", status: .serviceUnavailable) }
            return text(service.stateStoreDegraded.map { "ready; \($0)\n" } ?? "ready\n")
        }
        router.get("metrics") { _, _ in
            text(service.observer.metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("jobs/:id") { _, context -> Response in
            guard let id = context.parameters.get("id"), !id.isEmpty else { return text("missing job id\n", status: .badRequest) }
            let jobID = JobID(id)
            var summary = service.observer.summary(jobID)
            if let live = await service.broker.snapshot(jobID) {
                // Held here now: the live view (status and progress) wins.
                var current = summary ?? JobObserver.JobSummary(
                    id: id, name: live.name, priority: live.priority.name, status: live.status.rawValue, attempt: live.attempt)
                current.status = live.status.rawValue
                current.attempt = live.attempt
                current.progress = live.progress
                current.startedAt = live.startedAt ?? current.startedAt
                // With a store, say which instance this is, as the store's view of a job held elsewhere does.
                current.instance = service.broker.configuration.stateStore?.instance
                summary = current
            } else if let stored = await service.broker.storedJob(jobID), stored.status != nil {
                // Whichever instance holds or held it: the job-state store knows it as it is now.
                var current = summary ?? JobObserver.JobSummary(
                    id: id, name: stored.name ?? "", priority: stored.priority?.name ?? "", status: "", attempt: stored.attempt)
                current.status = stored.status?.rawValue ?? current.status
                current.attempt = stored.attempt
                current.progress = stored.progress
                current.startedAt = stored.startedAt ?? current.startedAt
                current.finishedAt = stored.finishedAt ?? current.finishedAt
                current.error = stored.error ?? current.error
                if stored.status == .deadLettered { current.deadLetterReason = stored.deadLetterReason?.code ?? current.deadLetterReason }
                current.instance = stored.instance.flatMap { $0.isEmpty ? nil : $0 }
                summary = current
            }
            guard let summary else {
                let scope = service.configuration.stateURL == nil
                    ? "this worker (it remembers its \(service.configuration.recentJobs) most recent jobs; set state.url to see every instance's)"
                    : "this worker or the job-state store (never taken by an instance, or past state.retention)"
                return text("job \(id) is not known to \(scope)\n", status: .notFound)
            }
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys]
            let data = (try? encoder.encode(summary)) ?? Data()
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
        }
        return Application(
            router: router, configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "warren"),
            onServerRunning: { [logger = service.logger] channel in
                // The bound port: the configured one, or the one the system chose for port 0.
                let bound = channel.localAddress?.port ?? port
                logger.info("operations server listening", metadata: ["http_address": "\(host):\(bound)"])
            },
            logger: service.logger)
    }

    private static func text(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType], body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }
}
