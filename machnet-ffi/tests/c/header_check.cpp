// One C++ translation unit that includes machnet.h (C++17, -Wall -Wextra -Werror): the header
// must be valid C++ and its declarations usable with C linkage.
#include "machnet.h"

#include <cerrno>
#include <cstring>
#include <type_traits>

static_assert(std::is_standard_layout<MachnetFlow_t>::value, "MachnetFlow_t is a plain struct");
static_assert(sizeof(MachnetFlow_t) == 12, "MachnetFlow_t matches the original layout");
static_assert(std::is_same<decltype(&machnet_recv),
                           ssize_t (*)(const void *, void *, size_t, MachnetFlow_t *)>::value,
              "machnet_recv keeps the original signature");
static_assert(std::is_same<decltype(&machnet_connect),
                           int (*)(void *, const char *, const char *, uint16_t,
                                   MachnetFlow_t *)>::value,
              "machnet_connect keeps the original signature");

extern "C" int cxx_header_check(void) {
    const char *v = machnet_version();
    if (v == nullptr || std::strncmp(v, "machnet-rs", 10) != 0) return 1;
    MachnetMsgHdr_t h{};
    errno = 0;
    if (machnet_sendmsg(nullptr, &h) != -1 || errno != EINVAL) return 2;
    return 0;
}
