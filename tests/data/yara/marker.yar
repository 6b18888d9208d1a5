rule vmsentinel_test_marker
{
    meta:
        description = "vmsentinel's test rule: a marker string a test process carries in its memory"
    strings:
        $marker = "vmsentinel-yara-test-marker-7f3a"
    condition:
        $marker
}
