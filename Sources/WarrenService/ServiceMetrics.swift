import CoreMetrics
public import Prometheus

/// Prometheus as the process's swift-metrics backend: what `/metrics` shows. The library emits
/// through swift-metrics (`JobMetrics`, the AMQP broker's reconnect counter); `warren serve`
/// bootstraps this once at start-up, before any broker or worker exists.
public enum ServiceMetrics {
    /// Where the metrics are collected, for `/metrics`.
    public static let registry = PrometheusCollectorRegistry()

    /// The backend, with the buckets the job duration histogram has always had.
    public static func factory() -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["warren_job_duration_seconds"] = [
            .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300),
        ]
        return factory
    }

    /// Makes Prometheus the process's metrics backend. Once per process (swift-metrics refuses a
    /// second bootstrap).
    public static func bootstrap() { MetricsSystem.bootstrap(factory()) }
}
