import FlowmeterCore
import Testing

@Suite struct LocalAddressesTests {
    // A namespace's /proc/net/fib_trie: the Main and Local tables list the same leaves.
    static let fibTrie = """
        Main:
          +-- 0.0.0.0/0 3 0 5
             +-- 10.200.0.0/24 2 0 2
                |-- 10.200.0.0
                   /24 link UNICAST
                |-- 10.200.0.1
                   /32 host LOCAL
                |-- 10.200.0.255
                   /32 link BROADCAST
             +-- 127.0.0.0/8 2 0 2
                |-- 127.0.0.1
                   /32 host LOCAL
        Local:
          +-- 0.0.0.0/0 3 0 5
                |-- 10.200.0.1
                   /32 host LOCAL
                |-- 192.168.7.9
                   /32 host LOCAL
        """

    @Test func ipv4() {
        #expect(LocalAddresses.ipv4(fibTrie: Self.fibTrie) == ["10.200.0.1", "192.168.7.9"])
        #expect(LocalAddresses.ipv4(fibTrie: "") == [])
    }

    @Test func ipv6GlobalOnly() {
        let text = """
            00000000000000000000000000000001 01 80 10 80       lo
            fe8000000000000000fc00fffe000001 04 40 20 80     eth0
            fd000000000000000000000000000002 04 40 00 82     eth0
            fd000000000000000000000000000002 05 40 00 82     eth1
            """
        #expect(LocalAddresses.ipv6(ifInet6: text) == ["fd00::2"])
    }

    @Test func endpointRowsPreferThePod() {
        let m = PodMetadata(
            namespace: "shop", pod: "ledger-0", podUID: "u", container: "ledger",
            labels: ["controller-revision-hash": "x", "statefulset.kubernetes.io/pod-name": "ledger-0"])
        let id = PodIdentity(metadata: m, appNameLabel: false)
        let rows = EndpointInfo.rows(
            pods: [("10.0.0.5", id), ("10.0.0.5", id), ("192.168.1.2", id)], nodeAddresses: ["192.168.1.2", "192.168.1.1"],
            node: "n1")
        #expect(
            rows == [
                EndpointInfo(
                    address: "10.0.0.5", service: "shop/ledger", namespace: "shop", workload: "ledger", pod: "ledger-0", node: "n1"),
                EndpointInfo(
                    address: "192.168.1.2", service: "shop/ledger", namespace: "shop", workload: "ledger", pod: "ledger-0", node: "n1"),
                EndpointInfo(address: "192.168.1.1", service: "node:n1", namespace: "", workload: "", pod: "", node: "n1"),
            ])
    }
}
