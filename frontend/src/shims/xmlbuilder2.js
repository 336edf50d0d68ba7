// vtk.js's XML readers (surface meshes in VTK XML, which the reader's viewer never loads)
// import xmlbuilder2, a Node library that needs Node's "events" and "url" modules. The build
// puts this module in its place so that the browser bundle needs no Node polyfills.
export function create() {
  throw new Error("VTK XML files are not supported by the reader's viewer");
}
