// swift-tools-version: 6.1
// Warren embedded in a Swift service: typed handlers registered in code, on RabbitMQ.
import PackageDescription

let package = Package(
    name: "TypedHandlers",
    platforms: [.macOS(.v15)],
    dependencies: [
        // In your own package: .package(url: "https://github.com/<you>/warren", from: "…")
        .package(name: "warren", path: "../.."),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "OrdersWorker",
            dependencies: [
                .product(name: "Warren", package: "warren"),
                .product(name: "WarrenAMQP", package: "warren"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)
