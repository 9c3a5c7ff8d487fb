// swift-tools-version: 6.1
// A Warren broker in a package of its own, on the transport seam only: `@_spi(Transport) import Warren`.
import PackageDescription

let package = Package(
    name: "TinyTransport",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TinyTransport", targets: ["TinyTransport"]),
    ],
    dependencies: [
        // In your own package: .package(url: "https://github.com/<you>/warren", from: "…")
        .package(name: "warren", path: "../.."),
    ],
    targets: [
        .target(name: "TinyTransport", dependencies: [.product(name: "Warren", package: "warren")]),
        .testTarget(
            name: "TinyTransportTests",
            dependencies: [
                "TinyTransport",
                .product(name: "Warren", package: "warren"),
                .product(name: "WarrenConformance", package: "warren"),
            ]
        ),
    ]
)
