'use strict';
// Puts the project into the Lambda package under the names it installs as
// (crm_elasticity.core, crm_elasticity.connectors: pyproject.toml maps the folders core/ and
// connectors/ there). The folders cannot be packaged as they are, because the code imports
// itself by the installed names. So the project is pip-installed without its dependencies
// (serverless-python-requirements adds those, from requirements-lambda.txt) into a scratch
// folder, and what pip installed is added to the package zip, after the requirements. pip
// builds from a copy of the checkout: setuptools would put anything left in the checkout's
// build/lib (a module since deleted) into the wheel.
//
// custom.installProject.exclude: files of the installed tree left out of the package.
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

// Not copied for the build: version control, deployment tooling and build leftovers.
const NOT_SOURCE = new Set(['node_modules', 'build', 'dist', '__pycache__']);

// Appends the installed project's files to the zip, sorted and with a fixed date (the same
// project gives the same bytes), and fails on a name the zip already holds.
const APPEND = `
import os, sys, zipfile
artifact, scratch, *excluded = sys.argv[1:]
files = sorted(
    os.path.relpath(os.path.join(folder, name), scratch).replace(os.sep, "/")
    for folder, _, names in os.walk(scratch) for name in names
)
# The import packages only: not pip's scripts (bin/) nor its record of the install (.dist-info,
# which names the scratch folder, so no two packages would be alike).
files = [f for f in files if f not in excluded and "__pycache__/" not in f
         and f.split("/")[0] != "bin" and not f.split("/")[0].endswith(".dist-info")]
with zipfile.ZipFile(artifact, "a", zipfile.ZIP_DEFLATED) as package:
    clash = sorted(set(files) & set(package.namelist()))
    if clash:
        sys.exit(f"the package already holds {clash[:5]}")
    for name in files:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(os.path.join(scratch, name), "rb") as source:
            package.writestr(info, source.read())
print(f"added {len(files)} files of the project to {os.path.basename(artifact)}")
`;

class InstallProject {
  constructor(serverless, cliOptions, { log } = {}) {
    this.serverless = serverless;
    this.cliOptions = cliOptions;
    this.log = log;
    this.hooks = {
      'after:package:createDeploymentArtifacts': () => this.addProject(this.serviceArtifact()),
      'after:deploy:function:packageFunction': () => {
        const fn = this.serverless.service.getFunction(this.cliOptions.function);
        return this.addProject((fn.package && fn.package.artifact) || this.serviceArtifact());
      },
    };
  }

  serviceArtifact() {
    const service = this.serverless.service;
    return (
      service.package.artifact ||
      path.join(this.serverless.serviceDir, '.serverless', `${service.service}.zip`)
    );
  }

  addProject(artifact) {
    const custom = this.serverless.service.custom || {};
    const python = (custom.pythonRequirements || {}).pythonBin || 'python3';
    const excluded = (custom.installProject || {}).exclude || [];
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'install-project-'));
    const source = path.join(scratch, 'source');
    const installed = path.join(scratch, 'installed');
    try {
      fs.cpSync(this.serverless.serviceDir, source, {
        recursive: true,
        filter: (from) => {
          const name = path.basename(from);
          return !(NOT_SOURCE.has(name) || name.endsWith('.egg-info') ||
                   (name.startsWith('.') && from !== this.serverless.serviceDir));
        },
      });
      execFileSync(
        python,
        ['-m', 'pip', 'install', '--quiet', '--no-deps', '--no-compile', '--target', installed,
         source],
        {
          stdio: ['ignore', 'inherit', 'inherit'],
          // CI and deploy hosts often run as root; pip's warning about it is noise here.
          env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' },
        }
      );
      const added = execFileSync(python, ['-c', APPEND, artifact, installed, ...excluded], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      if (this.log) this.log.info(added.trim());
    } finally {
      fs.rmSync(scratch, { recursive: true, force: true });
    }
  }
}

module.exports = InstallProject;
