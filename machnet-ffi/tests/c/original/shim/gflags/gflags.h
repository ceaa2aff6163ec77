/*
 * A stand-in for gflags (https://github.com/gflags/gflags), just enough for the original
 * Machnet's examples/hello_world.cc: DEFINE_string and gflags::ParseCommandLineFlags with
 * "--name=value", "--name value" (one or two dashes). Unknown flags end the program with
 * status 1, as gflags does. Test code only: it keeps gflags out of our dependencies.
 *
 * It includes <string> (as the real gflags.h does) and, for its error messages, <cstdio> and
 * <cstdlib>; not <unistd.h> or <sys/types.h>: usleep and ssize_t must come from machnet.h
 * (tests/c/self_contained.c checks the header's other standard declarations).
 */
#ifndef MACHNET_TEST_GFLAGS_SHIM_H_
#define MACHNET_TEST_GFLAGS_SHIM_H_

#include <cstdio>
#include <cstdlib>
#include <string>

namespace gflags_shim {

struct Flag {
    const char *name;
    std::string *value;
};

/* The flags DEFINE_string registered (few: a fixed table). */
inline Flag *flags() {
    static Flag table[16];
    return table;
}

struct Registrar {
    Registrar(const char *name, std::string *value) {
        for (int i = 0; i < 16; i++) {
            if (flags()[i].name == nullptr) {
                flags()[i] = Flag{name, value};
                return;
            }
        }
        __builtin_trap(); /* more flags than the table holds: grow it */
    }
};

inline std::string *find(const std::string &name) {
    for (int i = 0; i < 16 && flags()[i].name != nullptr; i++)
        if (name == flags()[i].name) return flags()[i].value;
    return nullptr;
}

}  // namespace gflags_shim

#define DEFINE_string(name, value, help)                  \
    std::string FLAGS_##name = (value);                   \
    static ::gflags_shim::Registrar gflags_shim_##name(#name, &FLAGS_##name)

namespace gflags {

/* Parses the flags; with remove_flags, leaves argv[0] and the non-flag arguments. */
inline void ParseCommandLineFlags(int *argc, char ***argv, bool remove_flags) {
    int kept = 1;
    for (int i = 1; i < *argc; i++) {
        std::string arg = (*argv)[i];
        if (arg.size() < 2 || arg[0] != '-') {
            (*argv)[kept++] = (*argv)[i];
            continue;
        }
        arg.erase(0, arg[1] == '-' ? 2 : 1);
        std::string::size_type eq = arg.find('=');
        std::string name = arg.substr(0, eq);
        std::string *value = ::gflags_shim::find(name);
        if (value == nullptr) {
            std::string msg = "ERROR: unknown command line flag '" + name + "'\n";
            fputs(msg.c_str(), stderr);
            exit(1);
        }
        if (eq != std::string::npos) {
            *value = arg.substr(eq + 1);
        } else if (i + 1 < *argc) {
            *value = (*argv)[++i];
        } else {
            std::string msg = "ERROR: flag '" + name + "' is missing its argument\n";
            fputs(msg.c_str(), stderr);
            exit(1);
        }
    }
    if (remove_flags) {
        (*argv)[kept] = nullptr;
        *argc = kept;
    }
}

}  // namespace gflags

#endif  // MACHNET_TEST_GFLAGS_SHIM_H_
