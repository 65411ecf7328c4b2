/// The version flowmeterd reports (build info metric, `--version`).
public enum FlowmeterVersion {
    public static let current = "0.1.0"
}
