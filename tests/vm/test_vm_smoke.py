import os, pytest
pytestmark = pytest.mark.skipif(not os.environ.get("TCPS_VM_SMOKE"), reason="runs inside the VM")
def test_hello():
    print("hello from", os.uname())
