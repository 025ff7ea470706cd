"""The `libvirt` provider: every replica a QEMU/KVM virtual machine, driven through libvirt.

One module per concern: `domain_xml` builds the domain document, `host` is the only module that
imports libvirt (connection, states, metadata), `images` builds and keeps bootable images, and
`provider` maps Shanzhi's instance calls onto domains. libvirt-python is optional
(`pip install 'shanzhi[vm]'`): without it the kind refuses to load, saying what to install.
"""
