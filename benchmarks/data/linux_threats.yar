// A benchmark rule set in the shape of public Linux threat rules: plain and wide strings,
// hex patterns with wildcards and jumps, case-insensitive strings, a few bounded regular
// expressions, and conditions that count and combine them. Written for vmsentinel's
// benchmarks; the strings name well-known tools and techniques, not samples.

rule bench_xmrig_miner {
    strings:
        $a = "stratum+tcp://" ascii
        $b = "stratum+ssl://" ascii
        $c = "\"donate-level\"" ascii
        $d = "randomx" nocase
        $e = "cryptonight" nocase
    condition:
        2 of them
}

rule bench_mirai_like {
    strings:
        $s1 = "/bin/busybox MIRAI" ascii
        $s2 = "POST /cdn-cgi/" ascii
        $s3 = "TSource Engine Query" ascii
        $s4 = { 2F 64 65 76 2F 77 61 74 63 68 64 6F 67 00 }
        $s5 = "/proc/net/tcp" ascii
    condition:
        3 of them
}

rule bench_reverse_shell_strings {
    strings:
        $a = "/bin/sh -i" ascii
        $b = "bash -i >& /dev/tcp/" ascii
        $c = "nc -e /bin/sh" ascii
        $d = "socat exec:" nocase
        $e = /python[23]? -c ['"]import socket/ ascii
    condition:
        any of them
}

rule bench_ld_preload_rootkit {
    strings:
        $a = "/etc/ld.so.preload" ascii
        $b = "readdir64" ascii
        $c = "__libc_dlsym" ascii
        $d = "hide_proc" nocase
        $e = "magic_gid" nocase
    condition:
        $a and 2 of ($b, $c, $d, $e)
}

rule bench_kernel_rootkit_strings {
    strings:
        $a = "kallsyms_lookup_name" ascii
        $b = "sys_call_table" ascii
        $c = "hide_module" nocase
        $d = "unhide" nocase
        $e = { 0F 20 C0 [0-8] 25 FF FF FE FF [0-8] 0F 22 C0 }  // clear CR0.WP
    condition:
        $e or ($a and $b and ($c or $d))
}

rule bench_ssh_backdoor {
    strings:
        $a = "ssh-rsa AAAAB3NzaC1yc2E" ascii
        $b = "authorized_keys" ascii
        $c = "PermitRootLogin yes" ascii
        $d = /\/root\/\.ssh\/[a-z_]{4,20}/ ascii
    condition:
        ($a and $b) or ($c and $d)
}

rule bench_tsunami_irc_bot {
    strings:
        $a = "NOTICE %s :" ascii
        $b = "PRIVMSG %s :" ascii
        $c = "JOIN #" ascii
        $d = "KILLALL" ascii
        $e = "GETSPOOFS" ascii
    condition:
        4 of them
}

rule bench_cobalt_like_beacon {
    strings:
        $a = { 69 68 69 68 69 6B ?? ?? 69 6B 69 68 69 6B }
        $b = "%02d/%02d/%02d %02d:%02d:%02d" ascii
        $c = "beacon" wide
        $d = { FC E8 ?? 00 00 00 [0-32] 60 89 E5 }
    condition:
        any of them
}

rule bench_shellcode_x64 {
    strings:
        $execve = { 48 31 D2 48 BB 2F 2F 62 69 6E 2F 73 68 }
        $socket = { 6A 29 58 99 6A 02 5F 6A 01 5E 0F 05 }
        $dup2 = { 6A 21 58 0F 05 48 FF CE 79 F6 }
    condition:
        any of them
}

rule bench_crypto_stealer {
    strings:
        $a = "wallet.dat" nocase
        $b = ".electrum" nocase
        $c = "keystore" nocase
        $d = /bc1q[02-9ac-hj-np-z]{38,58}/ ascii
    condition:
        2 of ($a, $b, $c) and #d > 3
}

rule bench_persistence_cron {
    strings:
        $a = "* * * * * root" ascii
        $b = "/etc/cron.d/" ascii
        $c = "@reboot" ascii
        $d = "systemctl enable" ascii
        $e = "/etc/rc.local" ascii
    condition:
        3 of them
}

rule bench_packed_upx {
    strings:
        $a = "UPX!" ascii
        $b = "$Info: This file is packed with the UPX" ascii
        $c = { 55 50 58 30 00 00 00 00 }
    condition:
        2 of them
}
