"""Write ``SlicerModule/slicer_api.txt``: the Slicer / MRML API names ``SegLoop.py`` may call, read
from Slicer's own source at a release tag (tests/test_slicer_conformance.py checks the module
against it, since 3D Slicer itself cannot run here).

    python SlicerModule/tools/slicer_api_names.py <Slicer git dir> v5.12.3 > SlicerModule/slicer_api.txt

From each file listed in SOURCES (``git show <tag>:<path>``): in Python files the names of
functions, classes and methods (``def`` / ``class``), instance attributes (``self.x =``) and the
attributes a docstring documents (``slicer.mrmlScene``, ``slicer.modules``); in C++ headers every identifier followed by
``(`` (declared methods, whatever their line breaks), the accessors VTK's macros declare
(``vtkGetMacro(Name, ...)`` -> ``GetName``, ``vtkSetMacro``, ``vtkBooleanMacro`` -> ``NameOn`` /
``NameOff``, the ``Object``/``String``/``Vector`` variants) and the members of ``enum`` blocks
(``PositionDefined``, ``StartCloseEvent``). Names only: no signature is checked. The VTK and
Qt classes the module meets are not in Slicer's source: the test takes Qt's names from PySide6
and lists the few VTK ones itself.
"""

import re
import subprocess
import sys

SOURCES = (
    "Base/Python/slicer/__init__.py",
    "Base/Python/slicer/util.py",
    "Base/Python/slicer/ScriptedLoadableModule.py",
    "Base/QTGUI/qSlicerWidget.h",
    "Base/QTGUI/qSlicerAbstractModule.h",
    "Base/QTCore/qSlicerAbstractCoreModule.h",
    "Base/QTGUI/qSlicerScriptedLoadableModuleWidget.h",
    "Base/QTGUI/qSlicerAbstractModuleWidget.h",
    "Base/QTGUI/qSlicerApplication.h",
    "Base/QTCore/qSlicerCoreApplication.h",
    "Libs/MRML/Core/vtkMRMLScene.h",
    "Libs/MRML/Core/vtkMRMLNode.h",
    "Libs/MRML/Core/vtkMRMLTransformableNode.h",
    "Libs/MRML/Core/vtkMRMLDisplayableNode.h",
    "Libs/MRML/Core/vtkMRMLDisplayNode.h",
    "Libs/MRML/Core/vtkMRMLVolumeNode.h",
    "Libs/MRML/Core/vtkMRMLScalarVolumeNode.h",
    "Libs/MRML/Core/vtkMRMLLabelMapVolumeNode.h",
    "Libs/MRML/Core/vtkMRMLVolumeDisplayNode.h",
    "Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.h",
    "Libs/MRML/Core/vtkMRMLTransformNode.h",
    "Libs/MRML/Core/vtkMRMLMarkupsNode.h",
    "Libs/MRML/Core/vtkMRMLMarkupsFiducialNode.h",
    "Libs/MRML/Core/vtkMRMLMarkupsROINode.h",
    "Libs/MRML/Core/vtkMRMLMarkupsCurveNode.h",
    "Libs/MRML/Core/vtkMRMLMarkupsClosedCurveNode.h",
    "Libs/MRML/Core/vtkMRMLScriptedModuleNode.h",
    "Libs/MRML/Core/vtkMRMLMarkupsDisplayNode.h",
    "Libs/MRML/Core/vtkMRMLSegmentationNode.h",
    "Libs/MRML/Core/vtkMRMLSegmentationDisplayNode.h",
    "Libs/vtkSegmentationCore/vtkSegmentation.h",
    "Libs/vtkSegmentationCore/vtkSegment.h",
    "Libs/MRML/Widgets/qMRMLNodeComboBox.h",
    "Libs/MRML/Widgets/qMRMLWidget.h",
    "Modules/Loadable/Markups/Widgets/qSlicerMarkupsPlaceWidget.h",
    "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h",
    "Modules/Loadable/Volumes/Logic/vtkSlicerVolumesLogic.h",
    "Modules/Scripted/SegmentEditor/SegmentEditor.py",
)
MACROS = {
    "vtkGetMacro": ["Get"], "vtkSetMacro": ["Set"], "vtkGetObjectMacro": ["Get"], "vtkSetObjectMacro": ["Set"],
    "vtkGetStringMacro": ["Get"], "vtkSetStringMacro": ["Set"], "vtkGetVector3Macro": ["Get"],
    "vtkSetVector3Macro": ["Set"], "vtkGetVectorMacro": ["Get"], "vtkSetVectorMacro": ["Set"],
    "vtkSetClampMacro": ["Set"], "vtkGetEnumMacro": ["Get"], "vtkSetEnumMacro": ["Set"], "vtkBooleanMacro": [],
    "vtkMRMLGetMacro": ["Get"],
}


def names_in(path: str, text: str) -> set:
    if path.endswith(".py"):  # definitions, instance attributes, and the attributes a docstring lists (slicer/__init__)
        return (set(re.findall(r"^\s*(?:def|class)\s+(\w+)", text, re.M)) | set(re.findall(r"\bself\.(\w+)\s*=", text))
                | set(re.findall(r":(?:py:)?attr(?:ibute)?:`?\s*(\w+)", text)))
    text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)  # comments out
    names = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text))
    for macro, name in re.findall(r"\b(vtk\w*Macro)\s*\(\s*(\w+)", text):
        if macro == "vtkBooleanMacro":
            names |= {f"{name}On", f"{name}Off"}
        for prefix in MACROS.get(macro, []):
            names.add(prefix + name)
    for block in re.findall(r"\benum\b[^{;]*\{([^}]*)\}", text):
        names |= set(re.findall(r"\b([A-Za-z_]\w*)\s*(?:=[^,]*)?(?:,|$)", block.strip()))
    return names


def main(git_dir: str, tag: str) -> int:
    commit = subprocess.run(["git", "-C", git_dir, "rev-parse", f"{tag}^{{commit}}"], check=True, capture_output=True, text=True).stdout.strip()
    names = set()
    for path in SOURCES:
        text = subprocess.run(["git", "-C", git_dir, "show", f"{tag}:{path}"], check=True, capture_output=True, text=True).stdout
        names |= names_in(path, text)
    print(f"# Slicer API names, from Slicer {tag} ({commit}), SlicerModule/tools/slicer_api_names.py")
    print("# sources: " + " ".join(SOURCES))
    for name in sorted(names):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
