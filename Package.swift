// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "warren",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Warren", targets: ["Warren"]),
        .library(name: "WarrenConformance", targets: ["WarrenConformance"]),
        .library(name: "WarrenAMQP", targets: ["WarrenAMQP"]),
        .executable(name: "warren", targets: ["warren"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // The broker-independent core: job contract, queue engine, in-memory broker, workers.
        .target(
            name: "Warren",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
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
        // RabbitMQ as a Warren broker.
        .target(
            name: "WarrenAMQP",
            dependencies: [
                "Warren", "CRabbitMQ", "CWarrenAMQP",
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: strict
        ),
        // Behaviour tests written once, run against every broker.
        .target(
            name: "WarrenConformance",
            dependencies: ["Warren"],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "warren",
            dependencies: [
                "Warren", "WarrenAMQP",
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
        .testTarget(
            name: "WarrenTests",
            dependencies: ["Warren", "WarrenConformance"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "WarrenAMQPTests",
            dependencies: ["Warren", "WarrenAMQP", "WarrenConformance"],
            swiftSettings: strict
        ),
    ]
)
