import Foundation
import Testing

@testable import FlowmeterExport

/// The API's error bodies keep the bytes they had when they were joined by
/// hand: keys in the order version, error, status; in the message, control
/// characters, DEL, U+2028, U+2029 and U+FEFF as \uXXXX, other text as is.
@Suite struct APIErrorBodyTests {
    @Test func bodyBytes() {
        let message =
            "unknown path /v2/\"q\"\\\u{0}\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f}\u{2028}\u{2029}\u{feff}é🙂: this API serves /v1/snapshot"
        #expect(
            APIServer.jsonString(APIServer.ErrorBody(error: message, status: 404))
                == #"{"version":1,"error":"unknown path /v2/\"q\"\\\u0000\u0001\u0008\u0009\u000a\u000c\u000d\u001f\u007f\u2028\u2029\ufeffé🙂: this API serves /v1/snapshot","status":404}"#
        )
        #expect(
            APIServer.jsonString(APIServer.ErrorBody(error: "GET only", status: 405)) == #"{"version":1,"error":"GET only","status":405}"#)
    }
}
