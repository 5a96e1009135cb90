// swift-tools-version:5.9
// Kilotune for iOS (and macOS): Swift wrappers over the C API of kilotune-ffi. The native part,
// KilotuneFFI.xcframework (the static library, kilotune.h and a module map), is built on a Mac
// by build-xcframework.sh before this package is used.
import PackageDescription

let package = Package(
    name: "Kilotune",
    platforms: [.iOS(.v15), .macOS(.v13)],
    products: [
        .library(name: "Kilotune", targets: ["Kilotune"]),
    ],
    targets: [
        .binaryTarget(name: "KilotuneFFI", path: "KilotuneFFI.xcframework"),
        .target(name: "Kilotune", dependencies: ["KilotuneFFI"]),
        .testTarget(name: "KilotuneTests", dependencies: ["Kilotune"]),
    ]
)
