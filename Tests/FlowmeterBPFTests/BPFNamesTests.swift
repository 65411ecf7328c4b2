import CLibbpf
import Foundation
import Testing

@testable import FlowmeterBPF

/// The names BPFEmbed generated are the embedded objects' own: libbpf, opening
/// each object as the loader does (no privilege needed), finds every generated
/// program with the generated section and every generated map, and there is
/// nothing in an object that has no generated name.
@Suite struct BPFNamesTests {
    @Test(arguments: BPFNames.objects.map { $0.object })
    func generatedNamesMatchTheObject(_ object: String) throws {
        let embedded = try #require(BPFNames.objects.first { $0.object == object })
        let obj = try BPFObject(embedded)
        #expect(obj.name == embedded.object)
        #expect(!embedded.programs.isEmpty)
        for p in embedded.programs {
            #expect(p.object == embedded.object)
            let prog = try #require(bpf_object__find_program_by_name(obj.handle, p.name), "\(p.name) is not in \(embedded.object)")
            #expect(String(cString: bpf_program__section_name(prog)) == p.section)
            #expect(try obj.program(p) == prog)
        }
        for m in embedded.maps {
            #expect(m.object == embedded.object)
            let map = try #require(bpf_object__find_map_by_name(obj.handle, m.name), "map \(m.name) is not in \(embedded.object)")
            #expect(try obj.map(m) == map)
        }
        // And the other way: every program and map libbpf sees has its name.
        var programs: [String] = [], maps: [String] = []
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj.handle, p) {
            programs.append(String(cString: bpf_program__name(next)))
            p = next
        }
        var m: OpaquePointer? = nil
        while let next = bpf_object__next_map(obj.handle, m) {
            maps.append(String(cString: bpf_map__name(next)))
            m = next
        }
        #expect(programs == embedded.programs.map(\.name))
        #expect(maps == embedded.maps.map(\.name))
    }

    @Test func everyObjectIsNamedOnce() {
        let objects = BPFNames.objects.map { $0.object }
        #expect(objects.count == 5 && Set(objects).count == objects.count)
    }

    /// A name of another object compiles (same type) but is refused by name,
    /// before libbpf is asked.
    @Test func aNameOfAnotherObjectIsRefused() throws {
        let probe = try BPFObject(BPFNames.FlowmeterProbe.self)
        #expect(throws: BPFError.self) { try probe.program(BPFNames.FlowmeterSock.Program.fm_updates) }
        #expect(throws: BPFError.self) { try probe.map(BPFNames.FlowmeterSock.Map.events) }
    }

    /// The kernel keeps 15 characters of a program's name; the tc cleanup
    /// recognises our filters by that.
    @Test func kernelNamesAreCut() {
        let ingress = BPFNames.FlowmeterTc.Program.flowmeter_ingress
        #expect(ingress.name.count > 15 && ingress.kernelName == String(ingress.name.prefix(15)))
        #expect(FlowAccountingProgram.isOurs(kernelName: BPFNames.FlowmeterTc.Program.flowmeter_egress.kernelName))
        #expect(!FlowAccountingProgram.isOurs(kernelName: BPFNames.FlowmeterSock.Program.fm_updates.kernelName))
    }
}
