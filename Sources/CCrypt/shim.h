// libxcrypt's crypt_rn(3): re-entrant, with the state on the caller's side,
// and it returns NULL (never a "*0" failure token) when it fails.
#include <crypt.h>
