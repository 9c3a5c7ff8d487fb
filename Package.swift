// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

// The service and the command are configuration, process and HTTP glue around the engine: built for
// size, which keeps the `warren` binary 74 KB smaller; the per-job path (Warren, WarrenAMQP) stays -O.
let glue: [SwiftSetting] = strict + [.unsafeFlags(["-Osize"], .when(configuration: .release))]

let package = Package(
    name: "warren",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Warren", targets: ["Warren"]),
        .library(name: "WarrenConformance", targets: ["WarrenConformance"]),
        .library(name: "WarrenAMQP", targets: ["WarrenAMQP"]),
        .executable(name: "warren", targets: ["warren"]),
        .executable(name: "warren-bench", targets: ["WarrenBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.0.0", traits: ["YAML"]),  // not the JSON file provider (needs full Foundation)
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        .package(url: "https://github.com/swift-otel/swift-w3c-trace-context", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0", traits: []),  // no ConfigReader glue, no full-Foundation extras
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.24.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
    ],
    targets: [
        // The broker-independent core: job contract, queue engine, in-memory broker, workers.
        .target(
            name: "Warren",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            swiftSettings: strict
        ),
        // rabbitmq-c, from Debian's librabbitmq-dev.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // What Swift cannot call in rabbitmq-c (its variadic login).
        .target(name: "CWarrenAMQP", dependencies: ["CRabbitMQ"]),
        // The I/O threads' tools (an eventfd, a ppoll wait, named threads): what Swift's Glibc
        // module does not export, shared by the clients of the broker and of the job-state store.
        .target(name: "CWarrenIO"),
        .target(name: "WarrenIO", dependencies: ["CWarrenIO"], swiftSettings: strict),
        // hiredis, from Debian's libhiredis-dev: the job-state store's Redis client.
        // (No pkgConfig: hiredis's .pc file adds -D_FILE_OFFSET_BITS=64, which SwiftPM refuses with a
        // warning; the header is found as <hiredis/hiredis.h> on the default path.)
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // The job-state store on Redis (or Valkey): one truth about jobs across instances.
        .target(
            name: "WarrenRedis",
            dependencies: [
                "Warren", "WarrenIO", "CHiredis",
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: strict
        ),
        // RabbitMQ as a Warren broker.
        .target(
            name: "WarrenAMQP",
            dependencies: [
                "Warren", "WarrenIO", "CRabbitMQ", "CWarrenAMQP",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // Behaviour tests written once, run against every broker.
        .target(
            name: "WarrenConformance",
            dependencies: ["Warren"],
            swiftSettings: strict
        ),
        // The deployable service: configuration, handlers that call HTTP services or run commands,
        // logs, metrics, the operations HTTP server, and the broker tooling.
        .target(
            name: "WarrenService",
            dependencies: [
                "Warren", "WarrenAMQP", "WarrenIO", "WarrenRedis",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: glue
        ),
        .executableTarget(
            name: "warren",
            dependencies: [
                "Warren", "WarrenAMQP", "WarrenRedis", "WarrenService",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: glue
        ),
        // `warren-bench`: the engine in memory, and Warren against a bare rabbitmq-c loop on a
        // real RabbitMQ. Not part of the `warren` binary.
        .executableTarget(
            name: "WarrenBench",
            dependencies: [
                "Warren", "WarrenAMQP", "WarrenIO", "WarrenRedis",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // A worker process the crash and shutdown tests start and kill.
        .executableTarget(
            name: "WarrenTestWorker",
            dependencies: ["Warren", "WarrenAMQP"],
            path: "Tests/WarrenTestWorker",
            swiftSettings: strict
        ),
        // Waiting with deadlines and child processes, shared by the test targets.
        .target(
            name: "WarrenTestSupport",
            path: "Tests/WarrenTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "WarrenTests",
            dependencies: [
                "Warren", "WarrenConformance", "WarrenTestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "WarrenServiceTests",
            dependencies: [
                "Warren", "WarrenAMQP", "WarrenIO", "WarrenService", "WarrenTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "WarrenRedisTests",
            dependencies: ["Warren", "WarrenRedis", "WarrenAMQP", "WarrenConformance", "WarrenTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "WarrenAMQPTests",
            dependencies: ["Warren", "WarrenAMQP", "WarrenIO", "WarrenConformance", "WarrenTestSupport"],
            swiftSettings: strict
        ),
    ]
)
