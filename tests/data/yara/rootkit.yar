rule vmsentinel_test_rootkit
{
    meta:
        description = "vmsentinel's test rootkit module: a message string in its read-only data"
    strings:
        $message = "vmsrootkit: ftrace hook"
    condition:
        $message
}
