// zlib's deflate for the gzip body of OTLP/HTTP requests.
#include <zlib.h>
